"""intake: TODO"""
