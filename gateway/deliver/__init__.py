"""deliver: TODO"""
