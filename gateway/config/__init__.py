"""config: TODO"""
