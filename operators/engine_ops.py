"""Operators about the engine itself: setting up its environment, cancelling the running job."""
from __future__ import annotations

from typing import Any

import bpy

from ..jobs import engine_env
from .job import EngineJobOperator, cancel_running_job, running_job


class UNPOSED_OT_setup_engine(EngineJobOperator, bpy.types.Operator):
    """Create the engine's Python environment and install its packages from PyPI (needs online access)"""

    bl_idname = "unposed.setup_engine"
    bl_label = "Set Up Engine"
    bl_options = {'REGISTER'}

    def job_command(self, context: bpy.types.Context) -> list[str]:
        return engine_env.setup_command()  # refuses (EngineEnvError, reported) while online access is off

    def job_finished(self, context: bpy.types.Context, result: dict[str, Any]) -> set[str]:
        engine_env.forget_checks()
        self.report({'INFO'}, f"Engine environment ready: {result.get('python', '')}")
        return {'FINISHED'}

    def job_cleanup(self, context: bpy.types.Context) -> None:
        engine_env.forget_checks()  # a failed or cancelled setup leaves the environment unusable


class UNPOSED_OT_cancel_job(bpy.types.Operator):
    """Cancel the running Unposed job (the scene stays as it was)"""

    bl_idname = "unposed.cancel_job"
    bl_label = "Cancel Job"
    bl_options = {'REGISTER'}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if running_job() is None:
            cls.poll_message_set("No Unposed job is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        cancel_running_job()
        context.window_manager.unposed_job.message = "Cancelling..."
        return {'FINISHED'}


classes: tuple = (UNPOSED_OT_setup_engine, UNPOSED_OT_cancel_job)
