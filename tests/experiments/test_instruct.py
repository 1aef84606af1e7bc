"""The decoder job (`tensorpeft compare --model <causal LM>`): prompts, answer-only loss, scoring, the CLI end to end.

Everything here runs on a tiny random LLaMA with a word-level ChatML tokenizer (no download); the real SmolLM2
runs are in ``test_smollm2.py`` (slow).
"""

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tensorpeft.cli import main
from tensorpeft.experiments import _instruct
from tensorpeft.experiments._data import load_dataset

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(words, chat_template=CHATML):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    # the roles, the system message and the user message's fixed words are always known
    fixed = {"system", "user", "assistant", "Text:", "Answer", "with", "one", "word:", "or", *_instruct.SYSTEM.split()}
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + sorted(set(words) | fixed)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("<|im_start|>", "isolated"), pre_tokenizers.Split("<|im_end|>", "isolated"),
         pre_tokenizers.WhitespaceSplit()]
    )  # fmt: skip
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|im_end|>", eos_token="<|im_end|>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A checkpoint directory: random 2-layer LLaMA (GQA 4/2 heads) + a word-level ChatML tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    data = load_dataset("rotten_tomatoes", n_test=64, n_train=256)
    words = {w for t in data.train_texts + data.test_texts for w in t.split()}
    words |= {"negative", "positive", *_instruct.QUESTIONS["rotten_tomatoes"].split()}
    tok = _tokenizer(words)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_llm")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------- prompts
def test_normalize_keeps_the_first_line_casefolded_without_outer_punctuation():
    assert _instruct.normalize("  Positive.\nBecause the film ...") == "positive"
    assert _instruct.normalize("«Sport»!") == "sport"
    assert _instruct.normalize("  NEGATIVE   review ") == "negative review"
    assert _instruct.normalize("") == ""


def test_label_words_must_stay_distinct_answers():
    assert _instruct.label_words(["negative", "positive"]) == ("negative", "positive")
    assert _instruct.label_words(["very  good", "bad"]) == ("very good", "bad")
    with pytest.raises(ValueError, match="same answer after normalizing"):
        _instruct.label_words(["Tech", "tech."])
    with pytest.raises(ValueError, match="empty after normalizing"):
        _instruct.label_words(["ok", "?!"])


def test_user_message_names_every_label():
    text = _instruct.user_message("Which?", "some text", ["a", "b", "c"])
    assert text == "Which?\n\nText: some text\n\nAnswer with one word: a, b or c."


def test_prompt_is_the_chat_without_the_answer_and_answers_end_the_turn():
    tok = _tokenizer({"Which?", "some", "text", "a", "b", "b."})
    prompts, answers = _instruct.encode_instructions(tok, ["some text"], ("a", "b"), "Which?", max_length=8)
    rendered = tok.decode(prompts[0])
    assert rendered.startswith("<|im_start|>") and rendered.rstrip().endswith("assistant")
    assert [tok.convert_ids_to_tokens(a) for a in answers] == [["a", "<|im_end|>"], ["b", "<|im_end|>"]]


def test_texts_are_cut_to_max_length_tokens():
    tok = _tokenizer({f"w{i}" for i in range(50)} | {"Q"})
    long = " ".join(f"w{i}" for i in range(50))
    (short,), _ = _instruct.encode_instructions(tok, [long], ("w1", "w2"), "Q", max_length=5)
    (full,), _ = _instruct.encode_instructions(tok, [long], ("w1", "w2"), "Q", max_length=100)
    assert len(full) - len(short) == 45


def test_a_tokenizer_without_chat_template_gets_the_plain_layout():
    tok = _tokenizer({"Q", "x", "a", "b"}, chat_template=None)
    prompt = _instruct._render(tok, "hello")
    assert prompt == f"System: {_instruct.SYSTEM}\nUser: hello\nAssistant:"
    assert _instruct._render(tok, "hello", "a") == prompt + " a<|im_end|>"


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "decoder"),
        ({"architectures": ["BertModel"], "model_type": "bert"}, "encoder"),
        ({"model_type": "bert"}, "encoder"),
        ({"model_type": "llama"}, "decoder"),
        ({"model_type": "t5-unknown"}, "encoder"),
    ],
)
def test_model_kind_reads_the_checkpoint_config(tmp_path, config, kind):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _instruct.model_kind(str(tmp_path)) == kind


def test_model_kind_names_the_bad_source(tmp_path):
    assert _instruct.model_kind("smollm2") == "decoder"
    with pytest.raises(ValueError, match=r"is not a checkpoint directory \(no config.json in it\), nor 'smollm2'"):
        _instruct.model_kind(str(tmp_path / "nothing"))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"its config\.json cannot be read"):
        _instruct.model_kind(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        _instruct.model_kind(str(tmp_path))


# ------------------------------------------------------------------------------------- loss and scoring
def test_answer_loss_counts_the_answer_tokens_only(tiny_llm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    prompts, answers = [[5, 6, 7, 8], [9, 10]], [[11, 2], [12, 13, 2]]
    loss = _instruct._answer_loss(model, prompts, answers, pad_id=2)
    # the reference: each row alone, unpadded, full logits, cross-entropy of its answer tokens
    total, count = 0.0, 0
    for p, a in zip(prompts, answers, strict=True):
        ids = torch.tensor([p + a])
        logits = model(input_ids=ids).logits[0]
        total += torch.nn.functional.cross_entropy(logits[len(p) - 1 : -1], torch.tensor(a), reduction="sum")
        count += len(a)
    torch.testing.assert_close(loss, total / count, rtol=1e-5, atol=1e-5)


def test_training_lowers_the_answer_loss_and_generation_scores_exact_matches(tiny_llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tensorpeft as tp
    from tensorpeft.experiments import TrainSettings

    model = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llm)
    data = load_dataset("rotten_tomatoes", n_test=16, n_train=64)
    words = _instruct.label_words(data.labels)
    prompts, answers = _instruct.encode_instructions(tok, data.train_texts, words, "Q?", 16)
    labels = [int(v) for v in data.train_labels]
    peft_model = tp.get_peft_model(model, tp.LoRAConfig(rank=4, target_modules="all-linear"))
    before = _instruct._answer_loss(peft_model, prompts[:16], [answers[k] for k in labels[:16]], tok.pad_token_id)
    settings = TrainSettings(steps=25, batch_size=8, lr=1e-2, seed=0)
    losses, per_step = _instruct.train_instruct(peft_model, prompts, labels, answers, settings, pad_id=tok.pad_token_id)
    assert len(losses) == 25 and per_step > 0
    after = _instruct._answer_loss(peft_model, prompts[:16], [answers[k] for k in labels[:16]], tok.pad_token_id)
    assert after < before
    accuracy, valid, seconds, shown = _instruct.evaluate_generation(
        peft_model, tok, prompts[:16], labels[:16], words, answers, batch_size=4
    )
    assert valid > 0.5  # after training, the model answers with a label word
    assert 0.0 <= accuracy <= valid and seconds > 0
    assert all(w in words for _, _, w in shown)


def test_generation_scores_against_normalized_labels():
    """A stand-in model whose greedy answers are known: accuracy and the valid share count exactly."""

    class Scripted(torch.nn.Module):
        def __init__(self, outputs):
            super().__init__()
            self.outputs = outputs

        def generate(self, input_ids, attention_mask, generation_config):
            rows = [self.outputs[int(r[-1])] for r in input_ids]
            width = max(len(r) for r in rows)
            out = torch.full((len(rows), width), 0, dtype=torch.long)
            for k, r in enumerate(rows):
                out[k, : len(r)] = torch.tensor(r)
            return torch.cat([input_ids, out], dim=1)

    tok = _tokenizer({"Positive.", "negative", "The", "film", "p1", "p2", "p3", "p4"})
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("Positive.", "negative", "The", "film")}
    prompts = [[tok.convert_tokens_to_ids(f"p{k}")] for k in range(1, 5)]
    outputs = {
        prompts[0][0]: [ids["Positive."]],  # right (normalized)
        prompts[1][0]: [ids["negative"]],  # valid, wrong
        prompts[2][0]: [ids["The"], ids["film"]],  # not a label
        prompts[3][0]: [ids["negative"]],  # right
    }
    accuracy, valid, _, _ = _instruct.evaluate_generation(
        Scripted(outputs), tok, prompts, [1, 1, 0, 0], ("negative", "positive"), [[5, 2], [6, 2]], batch_size=3
    )
    assert accuracy == 0.5 and valid == 0.75


# ---------------------------------------------------------------------------------------------- the job
def test_quick_decoder_compare_writes_table_json_and_plot(tiny_llm, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = ["compare", "--model", str(tiny_llm), "--quick", "--no-progress", "--methods",
            "zero-shot,lora:r1,tucker2:r1", "--n-test", "8", "--steps", "2", "-o", str(out_dir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "instruction tuning" in out and "valid answers" in out and "zero-shot" in out
    record = json.loads((out_dir / "results.json").read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == ["zero-shot", "lora:r1", "tucker2:r1"]
    assert rows["zero-shot"]["trainable_params"] == 0 and rows["zero-shot"]["seconds_per_step"] == 0
    # 2 layers × (q 32×32, k 16×32, v 16×32, o 32×32) at r=1
    assert rows["lora:r1"]["adapter_params"] == 2 * (2 * (32 + 32) + 2 * (16 + 32))
    assert 0 < rows["tucker2:r1"]["adapter_params"] <= rows["lora:r1"]["adapter_params"]
    for row in rows.values():
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and len(row["valid_answers"]) == 1
    assert record["settings"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (out_dir / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # 8 worker processes: ~50 s
def test_concurrent_runs_give_the_rows_of_one_at_a_time_in_order(tiny_llm):
    from tensorpeft.experiments import CompareSettings, TrainSettings, parse_methods, run_compare

    settings = CompareSettings(
        model_path=str(tiny_llm), methods=tuple(parse_methods(["lora:r1", "cp:r1"])), seeds=(0, 1),
        target_modules=("q_proj", "v_proj"), n_train=32, n_test=8, train=TrainSettings(steps=2, batch_size=2),
        threads=1,
    )  # fmt: skip
    one = run_compare(dataclasses.replace(settings, jobs=1))
    two = run_compare(dataclasses.replace(settings, jobs=2))
    assert [r.method for r in two] == ["lora:r1", "cp:r1"]
    assert [(r.adapter_params, r.accuracy, r.valid_answers) for r in two] == [
        (r.adapter_params, r.accuracy, r.valid_answers) for r in one
    ]


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_int(jobs):
    from tensorpeft.experiments import CompareSettings

    with pytest.raises(ValueError, match="`jobs` must be a positive int"):
        CompareSettings(model_path="smollm2", jobs=jobs)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--methods", "head,lora:r1"], "method 'head' is not a baseline of a decoder"),
        (["--head-lr", "0.1"], "`--head-lr` only applies to an encoder"),
        (["--methods", "lora:r99"], "largest LoRA rank on these modules is"),
        (["--methods", "tucker2/bogus:r1"], "stack_by"),
    ],
)
def test_bad_decoder_arguments_fail_before_training(tiny_llm, tmp_path, extra, needle, capsys):
    out_dir = tmp_path / "never"
    assert main(["compare", "--model", str(tiny_llm), "--quick", "--no-progress", "-o", str(out_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_zero_shot_is_refused_for_an_encoder(capsys):
    assert main(["compare", "--quick", "--methods", "zero-shot", "--no-progress"]) == 2
    assert "method 'zero-shot' is not a baseline of an encoder" in capsys.readouterr().err


def test_all_linear_targets_every_projection_but_the_head(tiny_llm):
    from tensorpeft.experiments._budget import model_from_path
    from tensorpeft.experiments._methods import parse_methods, resolve_method

    model = model_from_path(tiny_llm, causal=True)
    (spec,) = parse_methods(["lora:r1"])
    _, params, _ = resolve_method(spec, model, "all-linear")
    # per layer: q 32×32, k 16×32, v 16×32, o 32×32, gate 48×32, up 48×32, down 32×48; r = 1
    per_layer = (32 + 32) + 2 * (16 + 32) + (32 + 32) + 2 * (48 + 32) + (32 + 48)
    assert params == 2 * per_layer
    assert np.isclose(params, 2 * per_layer)
