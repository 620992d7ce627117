"""frozenvl.train"""
