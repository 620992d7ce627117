"""frozenvl.flame"""
