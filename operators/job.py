"""`EngineJobOperator`: the mixin every operator that runs an engine job derives from.

    class UNPOSED_OT_example(EngineJobOperator, bpy.types.Operator):
        def job_argv(self, context):                # after `python -m engine --progress jsonl`
            return ["import", self.abspath(self.filepath), "--out", out_dir]
        def job_finished(self, context, result):    # the only place the scene changes
            ...
            return {'FINISHED'}

`invoke()` runs the job in the background: a window-manager timer polls it, progress goes to
`context.window_manager.unposed_job` (drawn by ui/panel.py), ESC or `unposed.cancel_job` cancels it.
`execute()` (scripts, `blender -b`) runs the same job to the end before returning; Ctrl+C cancels it.
On failure or cancel the error is reported and `job_finished` is not called, so the scene is untouched.
Optional hooks: `job_prepare` (validate first: raise JobInputError), `job_command` (a command line other than
the engine's, e.g. the engine setup), `job_cleanup` (always called at the end). A subclass with its own `poll`
should also call `super().poll(context)`. One job runs at a time. The engine's working directory is the add-on
folder: pass absolute paths (`self.abspath(path)`).
"""
from __future__ import annotations

import os
from typing import Any

import bpy

from ..engine.errors import EngineError
from ..jobs import engine_env
from ..jobs.runner import EngineJob, JobCancelled, JobError, engine_command
from ..ui.preferences import get_preferences

_running: EngineJob | None = None  # the one job allowed at a time
TIMER_STEP_S = 0.1


class JobInputError(Exception):
    """Raised by `job_prepare` / `job_argv` for bad input: reported to the user, the job does not start."""


def running_job() -> EngineJob | None:
    return _running


def cancel_running_job() -> bool:
    """Cancel the running job, if any; whether there was one."""
    if _running is None:
        return False
    _running.cancel()
    return True


def _redraw(context: bpy.types.Context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in {'VIEW_3D', 'PREFERENCES'}:
                area.tag_redraw()


class EngineJobOperator:
    """Mixin for `bpy.types.Operator` subclasses that run one engine command (see the module docstring)."""

    _job: EngineJob | None = None
    _timer: Any = None

    # -- hooks for subclasses -------------------------------------------------------------------------------
    def job_prepare(self, context: bpy.types.Context) -> set[str] | None:
        """Validate inputs before anything starts: raise JobInputError, or report and return {'CANCELLED'}."""
        return None

    def job_argv(self, context: bpy.types.Context) -> list[str] | None:
        """Engine arguments after `--progress jsonl`; None: nothing to run, `job_finished` gets {} at once."""
        raise NotImplementedError

    def job_command(self, context: bpy.types.Context) -> list[str] | None:
        """The full command line; by default the engine interpreter (engine_env) running `job_argv`."""
        argv = self.job_argv(context)
        if argv is None:
            return None
        python, _source = engine_env.resolve_python(get_preferences(context).python_path)
        return engine_command(argv, python)

    def job_finished(self, context: bpy.types.Context, result: dict[str, Any]) -> set[str]:
        """The job succeeded: change the scene from `result` and return {'FINISHED'}."""
        raise NotImplementedError

    def job_cleanup(self, context: bpy.types.Context) -> None:
        """Called once the job has ended, however it ended (remove temporary files here)."""

    # -- helpers --------------------------------------------------------------------------------------------
    @staticmethod
    def abspath(path: str) -> str:
        """A Blender path ("//" relative to the .blend file, "~") as an absolute file-system path."""
        return os.path.abspath(os.path.expanduser(bpy.path.abspath(path)))

    # -- Operator API ---------------------------------------------------------------------------------------
    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if _running is not None:
            cls.poll_message_set("Another Unposed job is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        started = self._start(context)
        if isinstance(started, set):
            return started
        try:
            started.wait(on_event=lambda _event: self._show_progress(context))
        except KeyboardInterrupt:
            started.cancel()
        except (JobError, JobCancelled):
            pass  # _end reads the outcome again
        return self._end(context)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if context.window is None:
            return self.execute(context)
        started = self._start(context)
        if isinstance(started, set):
            return started
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_STEP_S, window=context.window)
        wm.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == 'ESC' and event.value == 'PRESS':
            self._job.cancel()
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER' or event.timer != self._timer:  # RNA wrappers: compare, not `is`
            return {'PASS_THROUGH'}
        finished = self._job.finished
        self._job.poll()
        self._show_progress(context)
        if not finished:
            return {'RUNNING_MODAL'}
        return self._end(context)

    def cancel(self, context: bpy.types.Context) -> None:
        """Blender is dropping the modal operator (e.g. a file is loading): stop the job, leave the scene."""
        if self._job is not None:
            self._job.cancel()
            self._release(context)

    # -- shared by execute and modal ------------------------------------------------------------------------
    def _start(self, context: bpy.types.Context) -> EngineJob | set[str]:
        """The started job, or the operator's return value when no job runs (refused, failed, nothing to do)."""
        global _running
        if _running is not None:
            self.report({'ERROR'}, "Another Unposed job is running: wait for it or cancel it")
            return {'CANCELLED'}
        try:
            started = self._prepare_and_start(context)
        except (JobInputError, EngineError, engine_env.EngineEnvError, JobError) as exc:
            self.report({'ERROR'}, f"{self.bl_label}: {exc}")
            started = {'CANCELLED'}
        if isinstance(started, set):
            self.job_cleanup(context)
            return started
        _running = self._job = started
        state = context.window_manager.unposed_job
        state.running, state.label, state.progress, state.text, state.message = True, self.bl_label, 0.0, "", ""
        return started

    def _prepare_and_start(self, context: bpy.types.Context) -> EngineJob | set[str]:
        refused = self.job_prepare(context)
        if refused is not None:
            return refused
        command = self.job_command(context)
        if command is None:
            return self.job_finished(context, {})
        job = EngineJob()
        job.start(command, env=engine_env.job_environment(get_preferences(context).hub_cache))
        return job

    def _show_progress(self, context: bpy.types.Context) -> None:
        state = context.window_manager.unposed_job
        state.progress, state.text = self._job.progress
        state.message = self._job.last_log
        _redraw(context)

    def _end(self, context: bpy.types.Context) -> set[str]:
        job = self._job
        state = context.window_manager.unposed_job
        try:
            result = job.wait()  # at once when finished; after a cancel, until the process group is gone
        except JobCancelled:
            state.message = f"{self.bl_label}: cancelled"
            self.report({'WARNING'}, state.message)
            return {'CANCELLED'}
        except JobError as exc:
            state.message = f"{self.bl_label} failed: {exc}"
            self.report({'ERROR'}, state.message)
            return {'CANCELLED'}
        else:
            state.message = f"{self.bl_label}: done"
            return self.job_finished(context, result)
        finally:
            self._release(context)

    def _release(self, context: bpy.types.Context) -> None:
        global _running
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if _running is self._job:
            _running = None
        self._job = None
        state = context.window_manager.unposed_job
        state.running, state.progress, state.text = False, 0.0, ""
        _redraw(context)
        self.job_cleanup(context)


class BrowseThenRunOperator(EngineJobOperator):
    """From the UI: a file browser first, then the job in the background. From scripts: `execute()` blocks."""

    _browsed = False

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        self._browsed = True
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self._browsed and context.window is not None:
            # Called by the file browser: run the job modally (Blender keeps the operator while it is modal).
            self._browsed = False
            return EngineJobOperator.invoke(self, context, None)
        return EngineJobOperator.execute(self, context)
