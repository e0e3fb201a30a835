"""outbox: TODO"""
