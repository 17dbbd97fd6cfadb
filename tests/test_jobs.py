"""The job runner (subprocess, JSON-lines protocol, cancel), the engine environment and the operator mixin."""
import json
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jobs.runner import EngineJob, JobCancelled, JobError, run_engine

EMIT = "import json, sys, time\ndef emit(**e):\n    print(json.dumps(e), flush=True)\n"


def start_script(body: str, grace: float = 1.5) -> EngineJob:
    job = EngineJob(grace=grace)
    job.start([sys.executable, "-c", EMIT + textwrap.dedent(body)])
    return job


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z"  # a zombie is dead


# -- runner, against scripts ------------------------------------------------------------------------------------
def test_events_parsed_in_order_and_garbage_kept_as_log():
    job = start_script("""
        emit(event="stage", name="matching", total=4)
        print("not json at all", flush=True)
        emit(event="progress", name="matching", done=1, total=4, message="pair 1")
        print("[1, 2, 3]")
        print('{"no_event_key": 1}')
        emit(event="progress", name="matching", done=3, total=4, message="pair 3")
        emit(event="log", level="warning", message="few matches")
        emit(event="result", result={"answer": 42})
    """)
    seen = []
    result = job.wait(on_event=seen.append)
    assert result == {"answer": 42}
    assert [e["event"] for e in seen] == ["stage", "log", "progress", "log", "log", "progress", "log", "result"]
    assert [e["message"] for e in seen if e["event"] == "log"] == [
        "not json at all", "[1, 2, 3]", '{"no_event_key": 1}', "few matches"]
    assert [e["done"] for e in seen if e["event"] == "progress"] == [1, 3]
    assert job.progress == (0.75, "matching 3/4: pair 3")
    assert job.last_log == "few matches"
    assert job.finished and not job.running


def test_poll_returns_events_as_they_arrive():
    job = start_script("""
        emit(event="stage", name="one", total=None)
        time.sleep(0.5)
        emit(event="result", result={})
    """)
    deadline = time.monotonic() + 5
    first = []
    while not first and time.monotonic() < deadline:
        first = job.poll()
        time.sleep(0.02)
    assert [e["event"] for e in first] == ["stage"]
    assert job.progress == (0.0, "one")  # unknown total: no fraction
    assert not job.finished
    assert job.wait(timeout=5) == {}


def test_error_event_gives_job_error_with_engine_message():
    job = start_script("""
        emit(event="stage", name="reading", total=1)
        emit(event="error", kind="BundleError", message="scene.json: cameras[0].width must be positive, got -3")
        sys.exit(2)
    """)
    with pytest.raises(JobError) as info:
        job.wait(timeout=10)
    assert str(info.value) == "scene.json: cameras[0].width must be positive, got -3"
    assert info.value.kind == "BundleError" and info.value.returncode == 2


def test_crash_without_error_event_gives_stderr_tail():
    job = start_script("""
        emit(event="stage", name="working", total=2)
        for i in range(500):
            print(f"noise line {i}", file=sys.stderr)
        1 / 0
    """)
    with pytest.raises(JobError) as info:
        job.wait(timeout=10)
    message = str(info.value)
    assert "exited with status 1" in message
    assert "ZeroDivisionError: division by zero" in message
    assert "noise line 499" in message
    assert "noise line 10\n" not in info.value.stderr_tail  # bounded: only the end is kept
    assert len(info.value.stderr_tail.splitlines()) == 40


def test_success_exit_without_result_is_an_error():
    job = start_script("""
        emit(event="stage", name="working", total=1)
    """)
    with pytest.raises(JobError, match="without a result"):
        job.wait(timeout=10)


def test_cancel_lets_the_engine_stop_cleanly():
    job = start_script("""
        emit(event="stage", name="waiting", total=None)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            emit(event="error", kind="cancelled", message="cancelled by the user")
            sys.exit(130)
    """, grace=5.0)
    assert [e["event"] for e in _wait_for_events(job, 1)] == ["stage"]
    t0 = time.monotonic()
    job.cancel()
    with pytest.raises(JobCancelled, match="cancelled by the user"):
        job.wait(timeout=10)
    assert time.monotonic() - t0 < 1.5  # stopped on the interrupt, well before the 5 s grace
    assert job._proc.returncode == 130


def test_cancel_kills_the_whole_process_group():
    # The child ignores the interrupt and leaves a grandchild (which inherits the ignore): both must die.
    job = start_script("""
        import signal, subprocess
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        grandchild = subprocess.Popen(["sleep", "60"])
        emit(event="log", level="info", message=str(grandchild.pid))
        while True:
            emit(event="progress", name="spinning", done=1, total=None, message=None)
            time.sleep(0.1)
    """)
    log = [e for e in _wait_for_events(job, 1, kind="log")]
    grandchild = int(log[0]["message"])
    t0 = time.monotonic()
    job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(timeout=10)
    assert time.monotonic() - t0 < 2.5
    assert job._proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 2
    while not process_gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(grandchild), "the grandchild outlived the cancel"


def test_wait_cancel_callback_and_timeout():
    job = start_script("""
        for i in range(600):
            emit(event="progress", name="loop", done=i, total=600, message=None)
            time.sleep(0.1)
    """)
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.3)
    assert job.running  # a timeout leaves it running
    seen = []
    with pytest.raises(JobCancelled):
        job.wait(on_event=seen.append, cancel=lambda: len(seen) >= 2)
    assert job.finished


def _wait_for_events(job: EngineJob, count: int, kind: str | None = None, timeout: float = 10) -> list:
    events, deadline = [], time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        events += [e for e in job.poll() if kind is None or e["event"] == kind]
        time.sleep(0.02)
    assert len(events) >= count, f"no {kind or 'event'} from the job in {timeout} s: {job.stderr_tail}"
    return events


# -- runner, against the real engine ----------------------------------------------------------------------------
def test_run_engine_reports_the_engines_error(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(JobError) as info:
        run_engine(["import", str(missing), "--out", str(tmp_path / "bundle")])
    assert str(missing) in str(info.value)
    assert info.value.returncode == 2 and info.value.kind != "crash"
    assert not (tmp_path / "bundle").exists()


def test_run_engine_usage_error_is_reported_from_stderr():
    with pytest.raises(JobError, match="invalid choice: 'no-such-command'"):
        run_engine(["no-such-command"])


def test_run_engine_returns_the_result(tmp_path):
    import numpy as np

    from engine.bundle import Camera, Image, Scene, write_bundle

    scene = Scene(cameras={1: Camera(1, "PINHOLE", 64, 48, [50.0, 50.0, 32.0, 24.0])},
                  images=[Image(1, "a.png", 1, np.eye(4)), Image(2, "b.png", 1, np.eye(4))])
    scene.images[1].cam_from_world[:3, 3] = [0.5, 0.0, 0.0]
    write_bundle(scene, tmp_path / "bundle")
    events = []
    result = run_engine(["export", str(tmp_path / "bundle"), "--format", "colmap", "--out", str(tmp_path / "col")],
                        on_event=events.append)
    assert result["out"] == str(tmp_path / "col")
    assert (result["format"], result["images"], result["cameras"], result["points"]) == ("colmap", 2, 1, 0)
    assert events[0]["event"] == "stage" and events[-1] == {"event": "result", "result": result}
    assert (tmp_path / "col" / "sparse" / "0" / "cameras.txt").is_file()


# -- engine environment (Blender side) --------------------------------------------------------------------------
@pytest.fixture
def online(addon):
    import bpy

    system = bpy.context.preferences.system
    before = system.use_online_access
    yield system
    system.use_online_access = before


def test_setup_refused_while_offline(addon, online):
    import bpy

    engine_env = addon.jobs.engine_env
    online.use_online_access = False
    assert not bpy.app.online_access
    with pytest.raises(engine_env.EngineEnvError, match="online access is off"):
        engine_env.setup_command()
    with pytest.raises(RuntimeError, match="online access is off"):
        bpy.ops.unposed.setup_engine()
    assert engine_env.ready_env_python() is None
    assert engine_env.job_environment()["HF_HUB_OFFLINE"] == "1"


def test_resolve_python_and_setup(addon, online, tmp_path):
    engine_env = addon.jobs.engine_env
    runner = addon.jobs.runner
    online.use_online_access = True
    engine_env.forget_checks()
    assert engine_env.resolve_python() == (sys.executable, "Blender's Python")  # the test venv has everything
    assert "HF_HUB_OFFLINE" not in engine_env.job_environment(str(tmp_path / "hub"))
    assert engine_env.job_environment(str(tmp_path / "hub"))["HF_HUB_CACHE"] == str(tmp_path / "hub")
    with pytest.raises(engine_env.EngineEnvError, match="does not exist: .*nowhere"):
        engine_env.resolve_python(str(tmp_path / "nowhere" / "python"))

    # Offline pip runs (--no-index): a requirement that cannot be found, then one that is already there.
    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_text("--no-index\nunposed-no-such-package==1.0\n")
    good.write_text("--no-index\npip\n")
    try:
        with pytest.raises(runner.JobError, match="No matching distribution found for unposed-no-such-package"):
            engine_env.setup(bad)
        assert engine_env.ready_env_python() is None
        assert engine_env.resolve_python()[1] == "Blender's Python"

        events = []
        python = engine_env.setup(good, on_event=events.append)
        stages = [e["name"] for e in events if e["event"] == "stage"]
        assert stages == ["Creating the engine environment", "Installing packages"]
        assert {"event": "progress", "name": "Installing packages", "done": 1, "total": 1,
                "message": "pip"} in events
        assert Path(python) == engine_env.ready_env_python()
        assert engine_env.resolve_python() == (python, "engine environment")
        usable, text = engine_env.status()
        assert usable and "set up again" in text  # set up from another requirements file than the add-on's
        # The new environment lacks the engine's packages: as a configured interpreter it is refused by name.
        with pytest.raises(engine_env.EngineEnvError, match="lacks numpy, opencv-python-headless"):
            engine_env.resolve_python(python)
    finally:
        shutil.rmtree(engine_env.env_dir(), ignore_errors=True)
        engine_env.forget_checks()
    assert engine_env.resolve_python()[1] == "Blender's Python"


# -- the operator mixin -----------------------------------------------------------------------------------------
@pytest.fixture
def job_operator(addon):
    import bpy

    mixin = addon.operators.job

    class UNPOSED_OT_testonly_job(mixin.EngineJobOperator, bpy.types.Operator):
        bl_idname = "unposed.testonly_job"
        bl_label = "Test Job"
        bl_options = {'REGISTER', 'UNDO'}

        script: bpy.props.StringProperty()
        engine_args: bpy.props.StringProperty(default="[]")
        refuse: bpy.props.StringProperty()

        def job_prepare(self, context):
            if self.refuse:
                raise mixin.JobInputError(self.refuse)

        def job_argv(self, context):
            return json.loads(self.engine_args)

        def job_command(self, context):
            if self.script:
                return [sys.executable, "-c", EMIT + textwrap.dedent(self.script)]
            return super().job_command(context)

        def job_finished(self, context, result):
            obj = bpy.data.objects.new(result["name"], None)
            context.scene.collection.objects.link(obj)
            return {'FINISHED'}

    bpy.utils.register_class(UNPOSED_OT_testonly_job)
    yield bpy.ops.unposed.testonly_job
    bpy.utils.unregister_class(UNPOSED_OT_testonly_job)


def scene_state(bpy):
    return sorted(o.name for o in bpy.data.objects), len(bpy.data.collections), dict(bpy.context.scene.items())


def test_operator_applies_result_on_success(empty_scene, job_operator):
    import bpy

    script = """
        emit(event="stage", name="thinking", total=2)
        emit(event="progress", name="thinking", done=2, total=2, message="done")
        emit(event="result", result={"name": "made_by_job"})
    """
    assert job_operator(script=script) == {'FINISHED'}
    assert [o.name for o in empty_scene.objects] == ["made_by_job"]
    state = bpy.context.window_manager.unposed_job
    assert not state.running and state.message == "Test Job: done"
    assert bpy.ops.unposed.testonly_job.poll()


@pytest.mark.parametrize("case", ["engine", "script", "refused"])
def test_operator_leaves_scene_untouched_on_failure(empty_scene, job_operator, tmp_path, case):
    import bpy

    before = scene_state(bpy)
    missing = tmp_path / "no_such_model"
    kwargs, expected = {
        # the real engine: a model folder that does not exist
        "engine": ({"engine_args": json.dumps(["import", str(missing), "--out", str(tmp_path / "out")])},
                   str(missing)),
        "script": ({"script": 'emit(event="result", result={"name": "x"})\n'
                              'emit(event="error", kind="BundleError", message="photo a.png is unreadable")\n'
                              'sys.exit(2)'}, "photo a.png is unreadable"),
        "refused": ({"refuse": "no photos selected", "script": 'emit(event="result", result={"name": "x"})'},
                    "no photos selected"),
    }[case]
    with pytest.raises(RuntimeError, match=expected.replace("\\", "\\\\").replace(".", r"\.")):
        job_operator(**kwargs)
    assert scene_state(bpy) == before
    assert not bpy.context.window_manager.unposed_job.running
    assert bpy.ops.unposed.testonly_job.poll()


LONG_JOB = """
    emit(event="stage", name="long", total=1000)
    for i in range(1000):
        emit(event="progress", name="long", done=i, total=1000, message=None)
        time.sleep(0.05)
    emit(event="result", result={"name": "should_not_exist"})
"""


def test_cancel_job_operator_stops_a_running_job(empty_scene, job_operator):
    import bpy

    ops = bpy.ops.unposed
    seen = {}

    def press_cancel(_signum, _frame):  # runs on the main thread while execute() waits for the job
        seen["running"] = bpy.context.window_manager.unposed_job.running
        seen["progress"] = bpy.context.window_manager.unposed_job.progress
        seen["can_start_another"] = ops.testonly_job.poll()
        seen["can_cancel"] = ops.cancel_job.poll()
        seen["cancel"] = ops.cancel_job()

    before = scene_state(bpy)
    previous = signal.signal(signal.SIGALRM, press_cancel)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.8)
        t0 = time.monotonic()
        assert job_operator(script=LONG_JOB) == {'CANCELLED'}
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    progress = seen.pop("progress")
    assert seen == {"running": True, "can_start_another": False, "can_cancel": True, "cancel": {'FINISHED'}}
    assert 0 < progress < 0.1  # about 16 of 1000 steps after 0.8 s
    assert elapsed < 3.0
    assert scene_state(bpy) == before
    assert bpy.context.window_manager.unposed_job.message == "Test Job: cancelled"
    assert not ops.cancel_job.poll() and ops.testonly_job.poll()


def test_ctrl_c_cancels_a_synchronous_job(empty_scene, job_operator):
    import bpy

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    before = scene_state(bpy)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        assert job_operator(script=LONG_JOB) == {'CANCELLED'}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert scene_state(bpy) == before
    assert bpy.ops.unposed.testonly_job.poll()


def test_modal_steps_follow_the_job_and_esc_cancels(addon, empty_scene):
    """The modal path, driven with stand-in events (timers never fire in bpy-as-a-module)."""
    import bpy
    from types import SimpleNamespace

    mixin = addon.operators.job
    reports = []

    class Op(mixin.EngineJobOperator):  # the mixin alone: the same methods a registered operator gets
        bl_label = "Modal Test"
        script = ""

        def report(self, kind, message):
            reports.append((set(kind), message))

        def job_command(self, context):
            return [sys.executable, "-c", EMIT + textwrap.dedent(self.script)]

        def job_finished(self, context, result):
            context.scene.collection.objects.link(bpy.data.objects.new(result["name"], None))
            return {'FINISHED'}

    timer = SimpleNamespace(type='TIMER', value='NOTHING', timer=None)
    context, state = bpy.context, bpy.context.window_manager.unposed_job

    op = Op()
    op.script = """
        emit(event="stage", name="work", total=4)
        for i in range(1, 5):
            time.sleep(0.1)
            emit(event="progress", name="work", done=i, total=4, message=f"step {i}")
        emit(event="result", result={"name": "modal_result"})
    """
    assert isinstance(op._start(context), addon.jobs.runner.EngineJob)
    assert state.running and state.label == "Modal Test" and mixin.running_job() is op._job
    fractions, deadline = [], time.monotonic() + 10
    outcome = {'RUNNING_MODAL'}
    while outcome == {'RUNNING_MODAL'} and time.monotonic() < deadline:
        assert op.modal(context, SimpleNamespace(type='MOUSEMOVE', value='NOTHING', timer=None)) == {'PASS_THROUGH'}
        outcome = op.modal(context, timer)
        fractions.append(state.progress)
        time.sleep(0.05)
    assert outcome == {'FINISHED'}
    assert [o.name for o in empty_scene.objects] == ["modal_result"]
    running = fractions[:-1]
    assert running == sorted(running) and 0 < max(running) <= 1  # progress shown, growing, while it ran
    assert fractions[-1] == 0.0  # and reset when done
    assert not state.running and mixin.running_job() is None and state.message == "Modal Test: done"

    op = Op()
    op.script = LONG_JOB
    op._start(context)
    assert op.modal(context, SimpleNamespace(type='ESC', value='PRESS', timer=None)) == {'RUNNING_MODAL'}
    deadline = time.monotonic() + 5
    while (outcome := op.modal(context, timer)) == {'RUNNING_MODAL'} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcome == {'CANCELLED'}
    assert reports[-1] == ({'WARNING'}, "Modal Test: cancelled")
    assert [o.name for o in empty_scene.objects] == ["modal_result"]  # unchanged by the cancelled job
    assert not state.running and mixin.running_job() is None
