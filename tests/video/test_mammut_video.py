"""MaMMUT on clips: both decoder passes, question answering with a forced prefix, image-checkpoint loading,
the video data preprocessor and source-grouped batches."""

from __future__ import annotations

import pytest
import torch
from mmengine.structures import BaseDataElement
from torch.utils.data import ConcatDataset, SequentialSampler

from pretrain.models.generation import greedy_search
from toolkit.registry import DATA_SAMPLERS, MODELS

TUBES = [dict(kernel=(4, 8, 8), stride=(2, 8, 8)), dict(kernel=(8, 4, 4), stride=(8, 8, 8), offset=(0, 2, 2))]


def _model_cfg(repo_root, video: bool = True) -> dict:
    cfg = dict(
        type='MaMMUT',
        image_encoder=dict(type='MaMMUTViT', img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2),
        text_decoder=dict(type='MaMMUTTextDecoder', width=48, depth=2, num_heads=2),
        tokenizer=dict(
            type='HFTokenizer',
            path=str(repo_root / 'configs/_base_/tokenizers/shapes_world.json'),
            context_length=24,
        ),
        embed_dim=32,
        generation=dict(method='greedy', max_len=6),
        answer_max_len=3,
    )
    if video:
        cfg['video_tokenizer'] = dict(type='SparseTubeTokenizer', tubes=TUBES, frame_stride=4)
    return cfg


@pytest.fixture()
def model(repo_root):
    torch.manual_seed(0)
    return MODELS.build(_model_cfg(repo_root))


def _clips(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 32, 32)


def test_caption_and_question_losses_reach_every_parameter(model) -> None:
    samples = [
        BaseDataElement(
            text=f'a red circle moves {side}',
            question=['which way does the red circle move?', 'what colour is the circle?'],
            gt_answer=[side, 'red'],
        )
        for side in ('left', 'right', 'up')
    ]
    losses = model.loss(_clips(), samples)
    assert {'loss_contrastive', 'loss_caption', 'loss_answer'} <= set(losses)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert model.video_tokenizer.pos_gate.grad.abs().sum() > 0


def test_answer_loss_covers_only_answer_tokens(model) -> None:
    questions, answers = ['what colour is the circle?', 'how many shapes are there?'], ['red', 'two']
    ids, prefix = model._qa_ids(questions, answers, torch.device('cpu'))
    tok = model.tokenizer
    for row, p, q, a in zip(ids.tolist(), prefix.tolist(), questions, answers, strict=True):
        assert row[:p] == [tok.bos_token_id, *tok.encode(q)]
        assert row[p : p + len(tok.encode(a)) + 1] == [*tok.encode(a), tok.eos_token_id]
    # Changing only the answer changes the loss; the question tokens are never targets.
    clips = _clips(2)
    samples = [BaseDataElement(question=q, gt_answer=a) for q, a in zip(questions, answers, strict=True)]
    model.eval()
    base = model.loss(clips, samples)['loss_answer']
    img_ctx = model.image_context(model.visual_tokens(clips))
    logits = model.text_decoder.forward_generative(ids[:, :-1], img_ctx)
    targets = ids[:, 1:].clone()
    keep = torch.zeros_like(targets, dtype=torch.bool)
    for i, p in enumerate(prefix.tolist()):
        keep[i, p - 1 : p - 1 + len(tok.encode(answers[i])) + 1] = True
    targets[~keep] = -100
    expected = model.caption_loss(logits, targets)
    torch.testing.assert_close(base, expected)


def test_predict_answers_and_captions(model) -> None:
    model.eval()
    samples = [
        BaseDataElement(
            question=['what does the circle do?', 'how many shapes are there?'],
            gt_answer=['moves', 'one'],
            gt_captions=['a red circle moves left'],
            img_id=7,
        ),
        BaseDataElement(
            question=['what colour is the square?'],
            gt_answer=['blue'],
            gt_captions=['a blue square'],
            img_id=8,
        ),
    ]
    out = model.predict(_clips(2), samples)
    assert isinstance(out[0].pred_answer, list) and len(out[0].pred_answer) == 2
    assert len(out[1].pred_answer) == 1
    assert all(len(a.split()) <= 3 for s in out for a in s.pred_answer)  # answer_max_len tokens
    assert out[0].img_emb.shape == (32,) and out[0].txt_emb.shape == (1, 32)
    assert isinstance(out[1].pred_caption, str)
    single = model.predict(_clips(1), [BaseDataElement(question='what does the circle do?')])
    assert isinstance(single[0].pred_answer, str) and not hasattr(single[0], 'img_emb')


def test_generate_and_answer_equals_the_two_calls_from_one_encoder_pass(model) -> None:
    """What the web demo calls: the captions and answers of generate() and answer(), one encoder pass."""
    model.eval()
    clips, questions = _clips(2), ['what does the circle do?', 'how many shapes are there?']
    with torch.no_grad():
        expected = model.generate(clips), model.answer(clips, questions)
        passes = []
        handle = model.video_tokenizer.register_forward_hook(lambda *args: passes.append(1))
        try:
            got = model.generate_and_answer(clips, questions)
        finally:
            handle.remove()
    assert got == expected and len(passes) == 1


def test_forced_prefix_generation_keeps_each_prompt_and_matches_uncached(model) -> None:
    model.eval()
    img_ctx = model.image_context(model.visual_tokens(_clips(3)))
    prefix = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 0, 0]])
    lengths = torch.tensor([3, 1, 2])
    kwargs = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, max_len=4, min_len=1)
    cached = greedy_search(model.text_decoder, img_ctx, prefix_ids=prefix, prefix_lengths=lengths, **kwargs)
    plain = greedy_search(
        model.text_decoder, img_ctx, prefix_ids=prefix, prefix_lengths=lengths, use_cache=False, **kwargs
    )
    assert torch.equal(cached, plain)
    for row, p, n in zip(cached.tolist(), prefix.tolist(), lengths.tolist(), strict=True):
        assert row[0] == 1 and row[1 : 1 + n] == p[:n]
        generated = row[1 + n :]
        assert generated[0] != 2  # min_len counts after the prompt
        assert len([t for t in generated if t != 0]) <= 4


def test_image_checkpoint_initialises_the_tubes(repo_root) -> None:
    torch.manual_seed(1)
    image_model = MODELS.build(_model_cfg(repo_root, video=False))
    video_model = MODELS.build(_model_cfg(repo_root))
    result = video_model.load_state_dict(image_model.state_dict(), strict=False)
    assert result.missing_keys == ['video_tokenizer.pos_gate'] and not result.unexpected_keys
    patch = image_model.image_encoder.patch_embed
    reference = MODELS.build(dict(type='SparseTubeTokenizer', embed_dim=48, patch_size=8, tubes=TUBES))
    reference.inflate_patch_kernel(patch.weight, patch.bias)
    for ours, ref in zip(video_model.video_tokenizer.tubes, reference.tubes, strict=True):
        torch.testing.assert_close(ours.weight, ref.weight)
        torch.testing.assert_close(ours.bias, ref.bias)
    # A video checkpoint's own tubes are kept.
    state = video_model.state_dict()
    state['video_tokenizer.tubes.0.bias'] = torch.full_like(state['video_tokenizer.tubes.0.bias'], 3.0)
    video_model.load_state_dict(state)
    assert torch.all(video_model.video_tokenizer.tubes[0].bias == 3.0)


def test_clips_without_a_video_tokenizer_fail_clearly(repo_root) -> None:
    image_model = MODELS.build(_model_cfg(repo_root, video=False))
    with pytest.raises(ValueError, match='no video_tokenizer'):
        image_model.encode_image(_clips(1))


def test_video_preprocessor_normalises_clips_and_flips_only_images() -> None:
    pre = MODELS.build(dict(type='VideoTextDataPreprocessor', mean=[10.0, 20.0, 30.0], std=[2.0, 4.0, 5.0]))
    clips = [torch.full((3, 4, 8, 8), 50, dtype=torch.uint8) for _ in range(2)]
    clips[0][0] = 12
    out = pre(dict(inputs=clips, data_samples=None))['inputs']
    assert out.shape == (2, 3, 4, 8, 8) and out.dtype == torch.float32
    assert out[0, 0].unique().tolist() == [1.0] and out[1, 2].unique().tolist() == [4.0]
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[2] = 30  # BGR: the red channel is last
    out = pre(dict(inputs=[image], data_samples=None))['inputs']
    assert out[0, 0].unique().tolist() == [10.0] and out[0, 2].unique().tolist() == [-6.0]
    with pytest.raises(ValueError, match='one shape'):
        pre(dict(inputs=[clips[0], image], data_samples=None))


class _Records:
    def __init__(self, n: int, modality: str | None) -> None:
        self.n, self.modality = n, modality

    def __len__(self) -> int:
        return self.n

    def get_data_info(self, index: int) -> dict:
        return {} if self.modality is None else {'modality': self.modality}


def test_group_by_source_batches_never_mix_sources() -> None:
    from toolkit.samplers import source_groups

    class Concat(ConcatDataset):  # torch's, with mmengine's get_data_info
        def get_data_info(self, index: int) -> dict:
            part = next(i for i, end in enumerate(self.cumulative_sizes) if index < end)
            start = self.cumulative_sizes[part - 1] if part else 0
            return self.datasets[part].get_data_info(index - start)

    data = Concat([_Records(5, None), _Records(7, 'video'), _Records(4, 'video')])
    groups = source_groups(data)
    assert groups == ['0:image'] * 5 + ['1:video'] * 7 + ['2:video'] * 4
    sampler = SequentialSampler(data)
    sampler.dataset = data
    batches = list(DATA_SAMPLERS.build(dict(type='GroupBySourceBatchSampler', sampler=sampler, batch_size=3)))
    assert sorted(i for b in batches for i in b) == list(range(16))
    assert all(len({groups[i] for i in batch}) == 1 for batch in batches)
    dropped = DATA_SAMPLERS.build(
        dict(type='GroupBySourceBatchSampler', sampler=sampler, batch_size=3, drop_last=True)
    )
    assert len(dropped) == len(list(dropped)) == 1 + 2 + 1
