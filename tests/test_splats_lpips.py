"""LPIPS (engine.splats.lpips) from stand-in weight files saved in the real layouts (torchvision's AlexNet state dict,
the lpips package's v0.1 alex.pth): metric properties, an independent numpy reference of the whole computation,
where the weights are found, and the errors for malformed files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from engine.errors import EngineError
from engine.splats import lpips
from engine.splats.lpips import ENV_DIR, load_lpips

# torchvision alexnet `features` convs: index -> (in, out, kernel, stride, padding)
CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
         10: (256, 256, 3, 1, 1)}


class _NotWeights:
    pass


def _weights(seed: int) -> tuple[dict, dict]:
    """Random trunk and head state dicts with the real files' key names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    trunk = {}
    for i, (cin, cout, k, _, _) in CONVS.items():
        bound = (cin * k * k) ** -0.5
        trunk[f"features.{i}.weight"] = (torch.rand(cout, cin, k, k, generator=gen) * 2 - 1) * bound * 3 ** 0.5
        trunk[f"features.{i}.bias"] = (torch.rand(cout, generator=gen) * 2 - 1) * 0.1
    trunk["classifier.6.bias"] = torch.zeros(1000)  # the real file also holds the classifier: ignored
    heads = {f"lin{k}.model.1.weight": torch.rand(1, CONVS[i][1], 1, 1, generator=gen)
             for k, i in enumerate(CONVS)}
    return trunk, heads


def _save(folder: Path, seed: int = 0, trunk_name: str = "alexnet-owt-0123abcd.pth",
          heads_name: str = "alex.pth") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    trunk, heads = _weights(seed)
    torch.save(trunk, folder / trunk_name)
    torch.save(heads, folder / heads_name)
    return folder / trunk_name, folder / heads_name


def _image(seed: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A smooth synthetic photo (H, W, 3) in [0, 1]: colour ramps, a ripple and a disc."""
    h, w = size
    v, u = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6, 3)
    img = np.stack([0.5 + 0.4 * np.sin(7 * u + 3 * v + phase[c]) * np.cos(5 * v - phase[c]) for c in range(3)], -1)
    disc = (u - 0.6) ** 2 + (v - 0.35) ** 2 < 0.04
    img[disc] = rng.uniform(0, 1, 3)
    return img.astype(np.float32)


def _noisy(img: np.ndarray, level: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(img.shape).astype(np.float32)
    return np.clip(img + level * noise, 0, 1)


@pytest.fixture(autouse=True)
def _no_local_weights(monkeypatch, tmp_path):
    """Hide the machine's own caches: no env var, an empty torch hub folder."""
    monkeypatch.delenv(ENV_DIR, raising=False)
    hub = tmp_path / "empty-hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_lpips(*_save(tmp_path_factory.mktemp("lpips")))


# -- the metric ---------------------------------------------------------------------------------------------------
def test_identical_images_are_at_distance_zero_and_distance_is_symmetric(model):
    a, b = torch.from_numpy(_image(0)), torch.from_numpy(_image(5))
    assert model(a, a.clone()).item() == pytest.approx(0.0, abs=1e-7)
    d_ab, d_ba = model(a, b).item(), model(b, a).item()
    assert d_ab > 1e-3
    assert d_ab == pytest.approx(d_ba, rel=1e-5)


def test_distance_grows_with_the_noise_level(model):
    img = _image(2)
    levels = [0.01, 0.03, 0.08, 0.2, 0.4]
    dists = [model(torch.from_numpy(img), torch.from_numpy(_noisy(img, s))).item() for s in levels]
    assert all(b > 1.1 * a for a, b in zip(dists, dists[1:])), dists


def test_batch_equals_per_image(model):
    refs = [_image(s) for s in range(3)]
    tests = [_noisy(r, 0.05 * (i + 1), seed=i) for i, r in enumerate(refs)]
    batch = model(torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2),
                  torch.from_numpy(np.stack(tests)).permute(0, 3, 1, 2))
    assert batch.shape == (3,)
    single = [model(torch.from_numpy(r), torch.from_numpy(t)).item() for r, t in zip(refs, tests)]
    np.testing.assert_allclose(batch.numpy(), single, rtol=1e-5)


def test_bad_input_shapes_are_refused(model):
    a = torch.zeros(40, 40, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        model(a, torch.zeros(40, 48, 3))
    with pytest.raises(ValueError, match="at least 31 px"):
        model(torch.zeros(30, 64, 3), torch.zeros(30, 64, 3))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        model(torch.zeros(40, 40, 4), torch.zeros(40, 40, 4))


def _reference(x: np.ndarray, y: np.ndarray, trunk: dict, heads: dict) -> float:
    """LPIPS v0.1 alex written out in float64 numpy from the paper and the published constants."""
    def conv(f, w, b, stride, pad):
        k = w.shape[-1]
        win = sliding_window_view(np.pad(f, ((0, 0), (pad, pad), (pad, pad))), (k, k), axis=(1, 2))
        return np.einsum("chwij,ocij->ohw", win[:, ::stride, ::stride], w) + b[:, None, None]

    def pool(f):
        return sliding_window_view(f, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-1, -2))

    def layers(img):
        f = ((2.0 * img.transpose(2, 0, 1) - 1) - np.array([-0.030, -0.088, -0.188])[:, None, None]) \
            / np.array([0.458, 0.448, 0.450])[:, None, None]
        out = []
        for i, (_, _, _, stride, pad) in CONVS.items():
            if i in (3, 6):
                f = pool(f)
            f = np.maximum(conv(f, trunk[f"features.{i}.weight"].double().numpy(),
                                trunk[f"features.{i}.bias"].double().numpy(), stride, pad), 0)
            out.append(f)
        return out

    total = 0.0
    for k, (fx, fy) in enumerate(zip(layers(x.astype(np.float64)), layers(y.astype(np.float64)))):
        ux = fx / (np.sqrt((fx ** 2).sum(0)) + 1e-10)
        uy = fy / (np.sqrt((fy ** 2).sum(0)) + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].double().numpy()[0, :, 0, 0]
        total += float(np.einsum("chw,c->hw", (ux - uy) ** 2, w).mean())
    return total


def test_matches_an_independent_numpy_computation(tmp_path):
    trunk_path, heads_path = _save(tmp_path, seed=3)
    model = load_lpips(trunk_path, heads_path)
    trunk, heads = torch.load(trunk_path, weights_only=True), torch.load(heads_path, weights_only=True)
    x, y = _image(4, (40, 52)), _noisy(_image(4, (40, 52)), 0.1)
    expected = _reference(x, y, trunk, heads)
    assert expected > 1e-3
    assert model(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(expected, rel=1e-4)
    # one layer alone (identity head on layer 0, the rest zero): the per-layer normalised-feature distance
    for k in range(1, 5):
        heads[f"lin{k}.model.1.weight"].zero_()
    heads["lin0.model.1.weight"].fill_(1.0)
    torch.save(heads, heads_path)
    one = load_lpips(trunk_path, heads_path)
    assert one(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(
        _reference(x, y, trunk, heads), rel=1e-4)


# -- finding the weights ------------------------------------------------------------------------------------------
def test_explicit_paths_come_before_the_env_folder(tmp_path, monkeypatch):
    env_files = _save(tmp_path / "env", seed=1)
    explicit = _save(tmp_path / "mine", seed=2, trunk_name="trunk.pth", heads_name="heads.pth")
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "env"))
    assert load_lpips(*explicit).sources == explicit
    assert load_lpips().sources == env_files
    assert load_lpips(heads_path=explicit[1]).sources == (env_files[0], explicit[1])


def test_hub_cache_and_lpips_package_are_found(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    trunk, _ = _save(hub / "checkpoints", trunk_name="alexnet-owt-7be5be79.pth")
    package = tmp_path / "site" / "lpips"
    _, heads = _save(package / "weights" / "v0.1")
    (package / "__init__.py").write_text("raise ImportError('the package must not be imported')\n")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert load_lpips().sources == (trunk, heads)


def test_none_when_a_file_is_not_on_this_machine(tmp_path, monkeypatch):
    assert load_lpips() is None
    folder = tmp_path / "only-heads"
    _, heads = _save(folder)
    (folder / "alexnet-owt-0123abcd.pth").unlink()
    monkeypatch.setenv(ENV_DIR, str(folder))
    assert lpips.find_lpips_weights() == (None, heads)
    assert load_lpips() is None


def test_missing_explicit_file_or_env_folder_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(EngineError, match="nowhere.pth: no such file"):
        load_lpips(tmp_path / "nowhere.pth", tmp_path / "heads.pth")
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "absent"))
    with pytest.raises(EngineError, match=f"{ENV_DIR}=.*absent.* is not a folder"):
        load_lpips()


# -- malformed files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which, edit, message", [
    ("trunk", lambda sd: sd.pop("features.8.bias"), r"trunk weights .*trunk.pth: key 'features.8.bias' is missing"),
    ("trunk", lambda sd: sd.update({"features.3.weight": torch.zeros(192, 64, 3, 3)}),
     r"'features.3.weight' should have shape \(192, 64, 5, 5\), got \(192, 64, 3, 3\)"),
    ("heads", lambda sd: sd.update({"lin2.model.1.weight": torch.zeros(1, 100, 1, 1)}),
     r"heads weights .*heads.pth: 'lin2.model.1.weight' should have shape \(1, 384, 1, 1\)"),
    ("heads", lambda sd: sd.update({"lin0.model.1.weight": torch.full((1, 64, 1, 1), float("nan"))}),
     "'lin0.model.1.weight' holds non-finite values"),
])
def test_wrong_keys_or_shapes_name_the_file_and_key(tmp_path, which, edit, message):
    trunk_path, heads_path = _save(tmp_path, trunk_name="trunk.pth", heads_name="heads.pth")
    path = trunk_path if which == "trunk" else heads_path
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    with pytest.raises(EngineError, match=message):
        load_lpips(trunk_path, heads_path)


def test_swapped_files_and_foreign_files_are_errors(tmp_path):
    trunk_path, heads_path = _save(tmp_path)
    with pytest.raises(EngineError, match="trunk weights .*alex.pth: key 'features.0.weight' is missing"):
        load_lpips(heads_path, trunk_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="junk.pth: not a torch weights file"):
        load_lpips(junk, heads_path)
    torch.save(_NotWeights(), junk)  # an arbitrary pickled object: weights_only refuses to run it
    with pytest.raises(EngineError, match="junk.pth: not a torch weights file"):
        load_lpips(trunk_path, junk)
    torch.save(torch.zeros(3), junk)
    with pytest.raises(EngineError, match="junk.pth: expected a state dict"):
        load_lpips(trunk_path, junk)


def test_training_evaluation_reports_lpips_when_weights_are_local(tmp_path, monkeypatch):
    """The trainer scores held-out and training views with LPIPS once the weights are found (here through
    UNPOSED_LPIPS_DIR), and reports nothing for it without them."""
    from engine.bundle import Camera, Image, Scene
    from engine.ply import Points
    from engine.splats.train import Trainer, TrainConfig

    rng = np.random.default_rng(0)
    cam = Camera(1, "PINHOLE", 64, 48, [50.0, 50.0, 32.0, 24.0])
    images = []
    for i in range(3):
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        images.append(Image(i + 1, f"{i}.png", 1, pose))
    points = Points(rng.uniform([-1, -1, 3], [1, 1, 4], (300, 3)), rng.integers(0, 255, (300, 3), dtype=np.uint8))
    scene = Scene(cameras={1: cam}, images=images, points=points)
    photos = [(_image(seed) * 255).astype(np.uint8) for seed in range(3)]
    config = TrainConfig(iterations=1, calibrate=(), tracks="off", test_every=2, sh_degree=0, eval_pose_steps=0)
    assert "test_lpips" not in Trainer(scene, config, photos=photos).evaluate(refine=False)
    _save(tmp_path / "weights")
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "weights"))
    trainer = Trainer(scene, config, photos=photos)
    row = trainer.evaluate(refine=False)
    with torch.no_grad():
        expected = np.mean([float(trainer.lpips(trainer.render(i).image.clamp(0, 1), trainer.targets[i]))
                            for i in trainer.test_ids])
    assert row["test_lpips"] == pytest.approx(expected, rel=1e-6) and row["test_lpips"] > 0
    assert "train_lpips" in row and any("LPIPS" in note for note in trainer.notes)
