"""frozenvl.eval"""
