"""The demo's pointer T5: T5 plus a copy mechanism over its input tokens (See et al., 2017). Demo only.

This is **not the paper's student**. RADCoT's student is a pretrained FiD flan-t5, which knows how to read
and copy before distillation starts. The demo's student is a 1.6M-parameter T5 trained from scratch on a
few thousand examples: it learns the teacher's *language* long before it learns to *copy* (after 1,500
steps a stock tiny T5 wrote fluent CoTs about the names it saw most in training, whatever the query: 2.5%
of its CoTs shared a name with the query, 1% named the answer). This class makes copying a first-class path:

    p(w) = g * p_vocab(w) + (1 - g) * sum of a(i) over input positions i holding token w

``p_vocab`` is T5's own distribution, ``a`` a single-head attention of the decoder's last hidden state over
the (FiD-concatenated) encoder states, and ``g`` a learned gate per step. The returned ``logits`` are
``log p``, so ``generate()`` (greedy, beams, sampling, the KV cache) works unchanged; the encoder token ids
travel as ``copy_ids`` (``(B, S)``, aligned with the encoder states) through ``generate``'s model kwargs.

It plugs into the general :class:`~radcot.student.model.FiDStudent` through the FiD hooks
(:class:`radcot.student.hooks.FiDHooks`): :meth:`~PointerT5ForConditionalGeneration.fid_model_kwargs` hands
the student's encoder token ids over as ``copy_ids``, and
:meth:`~PointerT5ForConditionalGeneration.fid_input_embeds` adds the context-frequency cue.

With ``context_frequency`` (``tiny-t5:...,pointer=1,context_frequency=1``) the encoder also reads, for each input
token, in how many of its example's FiD inputs the token occurs (:func:`context_frequency`, added as a learned
embedding that starts at zero). Every FiD input repeats the query, so the query's subject is in all of them and
an answer usually in one; without the cue a plain pointer copied the subject where the answer belonged
(``eval/demo_answer_slot.py``, teacher-forced, on the demo's held-out training queries: the answer's slot took
the subject 57% of the time and the answer 17%; with the cue 0% and 48%, of 65% whose answer is in the input).

Saved models are ordinary T5 checkpoints with three extra tensors (``pointer_q``, ``pointer_k``,
``pointer_gate``; ``context_frequency`` with the feature) whose ``config.json`` names this class under
``radcot_model_class`` (the student's model-class hook, :func:`radcot.student.hooks.model_class`). Checkpoints
of radcot <= 0.2 (``"radcot_pointer": true``, no class key) are mapped to it by :func:`legacy_class_path`.
"""
from __future__ import annotations

from typing import Any, Mapping

from radcot._deps import require
from radcot.student.hooks import MODEL_CLASS_KEY, FiDHooks

torch = require("torch", "the FiD student")
transformers = require("transformers", "the FiD student")

#: this class's import path, written to ``config.json`` under ``radcot_model_class``
MODEL_CLASS = "radcot.demo.pointer:PointerT5ForConditionalGeneration"
#: config flag of radcot <= 0.2 (no class key): the checkpoint is a pointer T5; still written so that they load it
POINTER_FLAG = "radcot_pointer"
#: config flag of radcot <= 0.2: 1 or 2 = a frequency-debiased pointer (a lever measured and dropped after 0.2)
DEBIAS_FLAG = "radcot_pointer_debias"
#: config flag: the encoder reads, next to each input token, how many of its example's FiD inputs hold that token
#: (:func:`context_frequency`); the value is the number of learned feature embeddings
FEATURES_FLAG = "radcot_context_frequency"
#: K of :func:`context_frequency`: feature 0 = padding, 1 = in every input of the example, 1 + n = in n of them
#: (n capped at K); K + 2 embeddings
FREQUENCY_BUCKETS = 8


def legacy_class_path(config: Mapping[str, Any]) -> str | None:
    """The class of a checkpoint written by radcot <= 0.2 (``"radcot_pointer": true`` and no class key).

    Raises:
        ValueError: a debiased pointer (``radcot_pointer_debias`` 1 or 2): its weights need code that was dropped.
    """
    if not config.get(POINTER_FLAG):
        return None
    debias = int(config.get(DEBIAS_FLAG) or 0)
    if debias:
        raise ValueError(f"{DEBIAS_FLAG}: {debias} (a frequency-debiased pointer T5, a lever dropped after radcot 0.2 "
                         f"because it lost on the dev world). Load it with radcot 0.2.x, or retrain without "
                         f"pointer_debias")
    return MODEL_CLASS


class PointerT5ForConditionalGeneration(FiDHooks, transformers.T5ForConditionalGeneration):
    """T5 whose output distribution mixes its vocabulary softmax with a copy distribution over ``copy_ids``.

    Without ``copy_ids`` (a plain T5 call) it behaves as the stock model apart from the returned logits
    being log-probabilities of the vocabulary distribution alone.
    """

    def __init__(self, config, features: bool | None = None):
        super().__init__(config)
        d = config.d_model
        if features is not None:
            setattr(self.config, FEATURES_FLAG, FREQUENCY_BUCKETS + 2 if features else 0)
        n_features = int(getattr(self.config, FEATURES_FLAG, 0) or 0)
        #: the encoder's extra input embeddings (:meth:`embed_inputs`), or None
        self.context_frequency = torch.nn.Embedding(n_features, d) if n_features else None
        self.pointer_q = torch.nn.Linear(d, d, bias=False)
        self.pointer_k = torch.nn.Linear(d, d, bias=False)
        self.pointer_gate = torch.nn.Linear(d, 1)
        setattr(self.config, MODEL_CLASS_KEY, MODEL_CLASS)
        setattr(self.config, POINTER_FLAG, True)
        self._init_pointer()

    def _init_pointer(self) -> None:
        d = self.config.d_model
        with torch.no_grad():
            self.pointer_q.weight.normal_(0.0, d ** -0.5)
            self.pointer_k.weight.normal_(0.0, d ** -0.5)
            self.pointer_gate.weight.zero_()
            self.pointer_gate.bias.zero_()  # start at an even mix of generating and copying
            if self.context_frequency is not None:  # start as the plain model
                self.context_frequency.weight.zero_()

    # ------------------------------------------------------------------------------ FiD hooks (FiDStudent calls them)

    def fid_input_embeds(self, input_ids, attention_mask, passage_mask=None):
        """With the context-frequency cue, :meth:`embed_inputs`; else None (the encoder embeds the ids itself)."""
        if self.context_frequency is None:
            return None
        return self.embed_inputs(input_ids, attention_mask, passage_mask)

    def fid_model_kwargs(self, state_ids) -> dict:
        """The encoder states' token ids travel to :meth:`forward` as ``copy_ids``."""
        return {"copy_ids": state_ids}

    def embed_inputs(self, input_ids, attention_mask, passage_mask=None):
        """The encoder's input embeddings ``(B, N, L, H)`` of FiD inputs ``(B, N, L)``: token embeddings, plus,
        with the context-frequency feature, the embedding of :func:`context_frequency`."""
        embeds = self.get_input_embeddings()(input_ids)
        if self.context_frequency is None:
            return embeds
        return embeds + self.context_frequency(context_frequency(input_ids, attention_mask, passage_mask,
                                                                 vocab_size=self.config.vocab_size))

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, labels=None, use_cache=None, copy_ids=None, **kwargs):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        elif not isinstance(encoder_outputs, transformers.modeling_outputs.BaseModelOutput):
            encoder_outputs = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=encoder_outputs[0])
        if copy_ids is None and input_ids is not None:
            copy_ids = input_ids
        enc = encoder_outputs.last_hidden_state
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self._shift_right(labels)
        kwargs.pop("return_dict", None)
        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           past_key_values=past_key_values, encoder_hidden_states=enc,
                           encoder_attention_mask=attention_mask, use_cache=use_cache, return_dict=True, **kwargs)
        hidden = dec.last_hidden_state  # (B, T, H)
        seq = hidden * (self.model_dim ** -0.5) if self.config.scale_decoder_outputs else hidden
        log_probs = torch.log_softmax(self.lm_head(seq).float(), dim=-1)  # (B, T, V)
        if labels is not None and copy_ids is not None and self.training:
            # training needs p(label) only: no (B, T, V) copy distribution (measured +20% per step with it)
            loss = self._label_loss(hidden, enc, attention_mask, copy_ids, log_probs, labels.to(log_probs.device))
            return transformers.modeling_outputs.Seq2SeqLMOutput(
                loss=loss, logits=None, past_key_values=dec.past_key_values, encoder_last_hidden_state=enc)
        if copy_ids is not None:
            log_probs = self._mix_copy(hidden, enc, attention_mask, copy_ids, log_probs)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.nll_loss(log_probs.reshape(-1, log_probs.size(-1)),
                                                labels.to(log_probs.device).reshape(-1), ignore_index=-100)
        return transformers.modeling_outputs.Seq2SeqLMOutput(
            loss=loss, logits=log_probs, past_key_values=dec.past_key_values,
            encoder_last_hidden_state=enc)

    def _pointer(self, hidden, enc, mask, copy_ids):
        """The copy attention ``(B, T, S)`` over the encoder states and the gate ``(B, T, 1)`` (share of generating)."""
        q = self.pointer_q(hidden).float()  # (B, T, H)
        k = self.pointer_k(enc).float()  # (B, S, H)
        scores = torch.einsum("bth,bsh->bts", q, k) * (q.shape[-1] ** -0.5)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1), torch.sigmoid(self.pointer_gate(hidden).float())

    def _mix_copy(self, hidden, enc, mask, copy_ids, log_probs):
        """``log(g * p_vocab + (1 - g) * p_copy)`` per step, over the whole vocabulary."""
        attn, gate = self._pointer(hidden, enc, mask, copy_ids)
        ids = copy_ids.to(log_probs.device).long()[:, None, :].expand(-1, attn.shape[1], -1)
        p_copy = torch.zeros_like(log_probs).scatter_add_(-1, ids, attn)  # (B, T, V)
        probs = gate * log_probs.exp() + (1.0 - gate) * p_copy
        return torch.log(probs.clamp_min(1e-12))

    def _label_loss(self, hidden, enc, mask, copy_ids, log_probs, labels):
        """Mean ``-log p(label)`` of the mixed distribution, from the labels' probabilities alone."""
        attn, gate = self._pointer(hidden, enc, mask, copy_ids)
        keep = labels != -100
        safe = labels.clamp_min(0)
        p_vocab = log_probs.gather(-1, safe[..., None]).squeeze(-1).exp()  # (B, T)
        hit = copy_ids.to(labels.device).long()[:, None, :] == safe[..., None]  # (B, T, S)
        p_copy = (attn * hit).sum(-1)  # (B, T)
        p = gate.squeeze(-1) * p_vocab + (1.0 - gate.squeeze(-1)) * p_copy
        return -(torch.log(p.clamp_min(1e-12)) * keep).sum() / keep.sum().clamp_min(1)


def context_frequency(input_ids, attention_mask, passage_mask=None, buckets: int = FREQUENCY_BUCKETS,
                      vocab_size: int | None = None):
    """``(B, N, L)``: for each token of a FiD input, in how many of its example's present inputs its token occurs.

    A reader's cue in the spirit of DrQA's exact-match feature, read off the ids alone: every FiD input repeats
    the query, so a token of the query (its subject included, or one its passages all share) is in *every*
    input (1), and a passage's answer usually in one (1 + n = in n inputs, n capped at ``buckets``, short of all). Padding and absent passage slots are 0. ``vocab_size`` (ids are below it) spares reading
    ``input_ids.max()`` back from the device.
    """
    B, N, L = input_ids.shape
    mask = attention_mask.bool()
    present = mask.any(-1) if passage_mask is None else mask.any(-1) & passage_mask.bool()  # (B, N)
    mask = mask & present[..., None]
    ids = input_ids.long().reshape(B * N, L)
    size = vocab_size if vocab_size is not None else (int(ids.max()) + 1 if ids.numel() else 1)
    holds = torch.zeros(B * N, size, dtype=torch.bool, device=ids.device)
    holds.scatter_(1, ids.masked_fill(~mask.reshape(B * N, L), 0), True)
    holds[:, 0] = False  # the padding id (0) was written for masked positions
    per_example = holds.reshape(B, N, size).sum(1)  # (B, V): inputs holding each token
    count = per_example.gather(1, ids.reshape(B, N * L)).reshape(B, N, L)
    n_present = present.sum(1)[:, None, None]
    feature = torch.where(count >= n_present, torch.ones_like(count), 1 + count.clamp(max=buckets))
    return feature.masked_fill(~mask, 0)
