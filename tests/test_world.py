import numpy as np
import pytest

from erasekit.testbeds.image import world


def _batch(seed, n=64):
    rng = np.random.default_rng(seed)
    labels = world.sample_labels(n, rng)
    captions = [world.caption_for(labels, i, rng) for i in range(n)]
    images, masks = world.render(labels, rng)
    return labels, captions, images, masks


def test_generator_is_deterministic():
    a, b = _batch(7), _batch(7)
    for field in a[0].__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a[0], field), getattr(b[0], field))
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3], b[3])
    c = _batch(8)
    assert not np.array_equal(a[2], c[2])


def test_world_sizes_meet_the_spec():
    assert len(world.SHAPES) >= 8 and len(world.STYLES) >= 4
    assert len(world.COLOURS) >= 6 and len(world.BACKGROUNDS) >= 3
    assert len(world.CHARACTERS) >= 3
    for concept in (*world.SHAPES, *world.STYLES):
        assert len(world.SYNONYMS[concept]) >= 2
    words = world.vocabulary()
    assert len(words) == len(set(words))
    for anchor in world.ANCHORS:
        assert all(w in words for w in anchor.split())


def test_captions_use_only_vocabulary_and_cover_the_language():
    rng = np.random.default_rng(0)
    labels = world.sample_labels(4000, rng)
    captions = [world.caption_for(labels, i, rng) for i in range(len(labels))]
    vocab = set(world.vocabulary())
    used = set()
    for c in captions:
        for w in c.split():
            assert w in vocab, (w, c)
            used.add(w)
    # every synonym, every character name and every anchor is seen in training captions
    for concept in (*world.SHAPES, *world.STYLES):
        assert set(world.word_forms(concept)) <= used
    assert set(world.CHARACTERS) <= used
    assert set(world.ANCHORS) <= set(captions)
    assert "watermark" not in used
    # some captions omit attributes
    assert any(not any(col in c for col in world.COLOURS) for c in captions)


def test_watermark_only_on_its_subset_at_its_share():
    rng = np.random.default_rng(1)
    labels = world.sample_labels(20000, rng)
    subset = np.array([world.WATERMARK.in_subset(labels.attributes(i)) for i in range(len(labels))])
    assert not labels.watermark[~subset].any()
    share = labels.watermark[subset].mean()
    n = subset.sum()
    assert abs(share - world.WATERMARK.share) < 4 * np.sqrt(0.25 / n)


def test_watermark_is_drawn_in_its_corner_only():
    attrs = [world.Attributes("circle", "filled", "red", "white", watermark=w) for w in (False, True)]
    labels = world.LabelBatch.from_attributes(attrs)
    geo = world.Geometry(cx=np.full(2, 14.5), cy=np.full(2, 14.5), r=np.full(2, 9.0))
    images, _ = world.render(labels, np.random.default_rng(0), geo)
    diff = np.abs(images[0].astype(int) - images[1].astype(int)).sum(-1) > 0
    r0, c0 = world.WATERMARK_ORIGIN
    assert diff.any()
    assert not diff[:r0].any() and not diff[:, :c0].any()


def test_characters_render_their_bound_attributes():
    rng = np.random.default_rng(3)
    labels = world.sample_labels(3000, rng)
    names = list(world.CHARACTERS)
    assert labels.named.any() and (labels.character >= 0).any()
    for i in np.flatnonzero(labels.character >= 0)[:200]:
        a = labels.attributes(i)
        expected = world.CHARACTERS[names[labels.character[i]]]
        assert (a.shape, a.style, a.colour, a.background) == (
            expected.shape,
            expected.style,
            expected.colour,
            expected.background,
        )
    named = [world.caption_for(labels, i, rng) for i in np.flatnonzero(labels.named)[:50]]
    assert all(any(n in c.split() for n in names) for c in named)


@pytest.mark.parametrize("style", world.STYLES)
def test_shapes_are_distinct_and_masks_exact(style):
    attrs = [world.Attributes(s, style, "blue", "black") for s in world.SHAPES]
    labels = world.LabelBatch.from_attributes(attrs)
    n = len(attrs)
    geo = world.Geometry(cx=np.full(n, 14.5), cy=np.full(n, 14.5), r=np.full(n, 9.0))
    images, masks = world.render(labels, np.random.default_rng(0), geo)
    for i in range(n):
        for j in range(i + 1, n):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).sum() > 500, (world.SHAPES[i], world.SHAPES[j])
    assert (masks > 0.5).sum(axis=(1, 2)).min() > 40
    assert masks.max() <= 1.0 and masks.min() >= 0.0
    # nothing is painted outside the silhouette
    painted = np.abs(images.astype(int) - np.array(world.BACKGROUNDS["black"])).sum(-1) > 30
    assert not (painted & (masks == 0)).any()


def test_styles_differ_in_painted_area():
    attrs = [world.Attributes("square", s, "red", "black") for s in world.STYLES]
    labels = world.LabelBatch.from_attributes(attrs)
    geo = world.Geometry(cx=np.full(4, 14.5), cy=np.full(4, 14.5), r=np.full(4, 9.5))
    images, _ = world.render(labels, np.random.default_rng(0), geo)
    area = {s: (images[k, :, :, 0] > 100).sum() for k, s in enumerate(world.STYLES)}
    assert area["filled"] > area["striped"] > area["outline"]
    assert area["filled"] > area["dotted"] > area["outline"]


def test_synonym_lookup():
    assert world.canonical("pentagram") == "star"
    assert world.canonical("hollow") == "outline"
    assert world.canonical("zorbo") == "zorbo"
    assert world.canonical("zebra") is None
    assert world.domain_of("crescent") == "shape" and world.domain_of("zorbo") == "character"


def test_oracle_data_leaves_out_every_image_of_the_excluded_concepts():
    import pytest

    from erasekit.core.errors import ConfigError
    from erasekit.testbeds.image.train import check_exclusions

    rng = np.random.default_rng(0)
    full = world.sample_labels(4000, rng)
    assert world.showing(full, "star").any() and world.showing(full, "zorbo").any() and world.showing(full, "watermark").any()
    kept = world.sample_labels_without(4000, rng, ("star", "zorbo", "watermark"))
    assert len(kept) == 4000
    for c in ("star", "zorbo", "watermark"):
        assert not world.showing(kept, c).any()
    assert world.showing(kept, "circle").mean() > 0.1  # the rest of the world keeps its proportions
    assert check_exclusions(["pentagram", "Zorbo", "star"]) == ("star", "zorbo")
    with pytest.raises(ConfigError, match="not a concept"):
        check_exclusions(["unicorn"])
    with pytest.raises(ConfigError, match="every colour"):
        check_exclusions(list(world.COLOURS))
