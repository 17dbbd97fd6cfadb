# SPDX-License-Identifier: GPL-3.0-or-later
"""Unposed Blender add-on: registration only. The engine runs in a separate process (see jobs/)."""


def register() -> None:
    from . import operators, ui

    ui.register()
    operators.register()


def unregister() -> None:
    from . import operators, ui
    from .operators import job

    job.cancel_running_job()  # a job left running would outlive the add-on that owns its result
    operators.unregister()
    ui.unregister()
