"""(being written)"""
classes: tuple = ()
