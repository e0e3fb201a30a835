"""pipeline: TODO"""
