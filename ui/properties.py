"""(being written)"""
classes: tuple = ()


def register() -> None:
    pass


def unregister() -> None:
    pass
