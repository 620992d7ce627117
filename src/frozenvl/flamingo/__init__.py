"""frozenvl.flamingo"""
