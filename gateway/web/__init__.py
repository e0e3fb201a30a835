"""web: TODO"""
