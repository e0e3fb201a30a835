"""staff: TODO"""
