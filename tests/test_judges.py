"""Real-model judges on tiny random models built from configs (CLIP, ViT) and NudeNet's own shipped
detector (offline): each judge's defining behaviour, its options, its description in results, and
its bad inputs as one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasekit.core.errors import ConfigError, MissingFileError
from erasekit.core.registry import get_judge
from erasekit.judges import make_judge, parse_judge
from erasekit.testing import tiny_clip_dir, tiny_image_classifier_dir

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return tiny_image_classifier_dir(tmp_path_factory.mktemp("vit") / "vit", ["cat", "dog", "van gogh"])


def test_judge_specs_parse_and_unknown_options_are_refused():
    assert parse_judge("nudenet") == ("nudenet", {})
    assert parse_judge("nudenet:threshold=0.45,classes=sensitive") == ("nudenet", {"threshold": "0.45", "classes": "sensitive"})
    with pytest.raises(ConfigError, match="key=value"):
        parse_judge("nudenet:threshold")
    with pytest.raises(ConfigError, match="takes no option 'colour'.*classes, threshold"):
        make_judge("nudenet:colour=red")
    with pytest.raises(ConfigError, match="judges sd, sdxl, sd3, flux models, not causal-lm"):
        make_judge("nudenet", kind="causal-lm")


# -- NudeNet (the real detector, offline) ------------------------------------------------------------
def test_nudenet_runs_offline_and_is_stable_on_drawn_images():
    judge = make_judge("nudenet")
    gray = np.full((2, 64, 64, 3), 128, np.uint8)
    assert judge.scores(gray).tolist() == [0.0, 0.0] and not judge.shows(gray).any()
    first, again = judge.detections(IMAGES), judge.detections(IMAGES)
    assert first == again  # the same drawn images give the same detections
    d = judge.describe()
    assert d["name"] == "nudenet" and d["version"] == "3.4.2" and d["threshold"] == 0.6 and len(d["classes"]) == 8


def test_nudenet_reads_rgb_images_reversed_and_applies_classes_and_threshold():
    seen = []

    class Detector:
        def detect(self, image):
            seen.append(image)
            return [{"class": "BELLY_EXPOSED", "score": 0.5, "box": [0, 0, 1, 1]},
                    {"class": "FACE_FEMALE", "score": 0.99, "box": [0, 0, 1, 1]}]  # fmt: skip

    from erasekit.judges.nudenet import NudeNetJudge

    image = np.zeros((1, 4, 4, 3), np.uint8)
    image[..., 0] = 255  # pure red in RGB
    judge = NudeNetJudge(threshold=0.45, detector=Detector())
    assert judge.scores(image).tolist() == [0.5] and judge.shows(image).tolist() == [True]
    assert seen[0][0, 0].tolist() == [0, 0, 255]  # handed over as BGR: red is the last channel
    assert not NudeNetJudge(threshold=0.6, detector=Detector()).shows(image).any()
    assert NudeNetJudge("sensitive", 0.45, detector=Detector()).scores(image).tolist() == [0.0]  # belly is not in it
    assert NudeNetJudge("anus,belly", 0.45, detector=Detector()).classes == ("ANUS_EXPOSED", "BELLY_EXPOSED")
    with pytest.raises(ConfigError, match="unknown class 'tail'"):
        NudeNetJudge("tail", detector=Detector())
    with pytest.raises(ConfigError, match="threshold must lie in"):
        NudeNetJudge(threshold=1.5, detector=Detector())
    with pytest.raises(ConfigError, match="tells nudity"):
        judge.shows(image, "a cat")


# -- CLIP ---------------------------------------------------------------------------------------------
def test_clip_zero_shot_is_the_softmax_of_scaled_cosines(clip_dir):
    judge = make_judge(f"clip:clip={clip_dir},labels=dog|car")
    p = judge.scores(IMAGES, "cat")
    img = judge.image_features(IMAGES)
    txt = judge.text_features(["a photo of cat", "a photo of dog", "a photo of car"])
    expected = (judge.model.logit_scale.exp() * img @ txt.T).softmax(-1)[:, 0]
    assert np.allclose(p, expected.numpy(), atol=1e-6)
    assert judge.shows(IMAGES, "cat").tolist() == (p >= 0.5).tolist()
    assert judge.candidates("dog") == ["a photo of dog", "a photo of car"]  # the concept is not its own rival
    assert make_judge(f"clip:clip={clip_dir}").candidates("cat") == ["a photo of cat", "an image"]
    assert judge.describe()["weights"] == "clip" and judge.describe()["labels"] == ["dog", "car"]


def test_clip_score_is_hessel_et_al(clip_dir):
    judge = make_judge(f"clip-score:clip={clip_dir}")
    s = judge.score(IMAGES, ["a cat", "a dog", "a car"])
    cos = (judge.image_features(IMAGES) * judge.text_features(["a cat", "a dog", "a car"])).sum(-1)
    assert np.allclose(s, (100 * cos).clamp(min=0).numpy(), atol=1e-4)
    with pytest.raises(ConfigError, match="3 images for 2 texts"):
        judge.score(IMAGES, ["a", "b"])


def test_q16_reads_its_prompts_without_pickle(clip_dir, tmp_path):
    from safetensors.torch import save_file

    width = make_judge(f"clip-score:clip={clip_dir}").text_features(["x"]).shape[-1]
    prompts = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    save_file({"prompts": prompts}, str(tmp_path / "q16.safetensors"))
    judge = make_judge(f"q16:clip={clip_dir},prompts={tmp_path / 'q16.safetensors'}")
    p = judge.scores(IMAGES)
    expected = (100 * judge.image_features(IMAGES) @ torch.nn.functional.normalize(prompts, dim=-1).T).softmax(-1)[:, 1]
    assert np.allclose(p, expected.numpy(), atol=1e-5)
    np.save(tmp_path / "q16.npy", prompts.numpy())
    assert np.allclose(make_judge(f"q16:clip={clip_dir},prompts={tmp_path / 'q16.npy'}").scores(IMAGES), p, atol=1e-5)
    (tmp_path / "prompts.p").write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match="pickle"):
        make_judge(f"q16:clip={clip_dir},prompts={tmp_path / 'prompts.p'}")
    save_file({"prompts": torch.zeros(3, width)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match=r"shape \(3, "):
        make_judge(f"q16:clip={clip_dir},prompts={tmp_path / 'bad.safetensors'}")
    with pytest.raises(ConfigError, match="prompts=FILE"):
        make_judge(f"q16:clip={clip_dir}")


def test_clip_judges_need_weights_the_user_brings(tmp_path):
    with pytest.raises(ConfigError, match="clip=DIR"):
        make_judge("clip")
    with pytest.raises(MissingFileError, match="is not a directory"):
        make_judge(f"clip:clip={tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a CLIP model directory"):
        make_judge(f"clip:clip={tmp_path / 'empty'}")


# -- any image classifier -----------------------------------------------------------------------------
def test_an_image_classifier_maps_its_labels_to_concepts(vit_dir):
    judge = make_judge(f"classifier:classifier={vit_dir},labels=animal=cat|dog;style=van gogh")
    probs = judge.probabilities(IMAGES)
    assert np.allclose(judge.scores(IMAGES, "animal"), (probs[:, 0] + probs[:, 1]).numpy(), atol=1e-6)
    assert judge.shows(IMAGES, "animal").tolist() == np.isin(probs.argmax(-1).numpy(), [0, 1]).tolist()
    assert judge.knows("dog") and judge.knows("style") and not judge.knows("car")
    at = make_judge(f"classifier:classifier={vit_dir},threshold=0.5")
    assert at.shows(IMAGES, "cat").tolist() == (probs[:, 0].numpy() >= 0.5).tolist()
    with pytest.raises(ConfigError, match="not one of its labels"):
        judge.shows(IMAGES, "car")
    with pytest.raises(ConfigError, match="monet .*is not a label"):
        make_judge(f"classifier:classifier={vit_dir},labels=style=monet")
    with pytest.raises(ConfigError, match="concept=label"):
        make_judge(f"classifier:classifier={vit_dir},labels=style")


def test_the_testbed_judge_describes_itself():
    judge = get_judge("testbed").factory("testbed")
    assert judge.describe()["name"] == "testbed" and judge.knows("star") and not judge.knows("zebra")
