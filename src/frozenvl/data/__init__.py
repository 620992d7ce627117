"""frozenvl.data"""
