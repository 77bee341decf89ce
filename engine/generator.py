"""One stream of generation: LM state, delay-pattern bookkeeping, sampling and streaming decode.

`start()` prefills BOS plus any prompt frames in one pass and samples the first column; each
`step()` feeds the last sampled column (delay mask applied), samples the next one, and returns
the codes of the frame it completed and the audio samples that became final. Frames and columns
are counted from the start of the stream; samples are at the model's rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .codec import DecoderState
from .conditioning import Condition
from .errors import ContextError
from .lm import CrossKV, KVCache
from .model import MusicGen
from .sampling import SamplingParams, guide, sample


@dataclass
class StepResult:
    codes: torch.Tensor  # (K, n) frames completed by this call (n is 0 or 1 per step)
    audio: torch.Tensor  # (channels, samples) that became final


@dataclass
class StreamState:
    """Everything that belongs to one stream; the model holds none of it."""

    cache: KVCache
    cross: CrossKV
    frames: torch.Tensor  # (K, capacity) codes of frames 0.., special token where unknown
    prompt_frames: int
    total_frames: int | None  # finite run length, None for an endless stream
    column: int  # last sampled column
    guided: bool  # batch carries an uncond row
    generator: torch.Generator
    decoder: DecoderState
    emit_prompt_audio: bool
    skip_samples: int = 0  # decoded samples still to drop (prompt audio the listener already has)
    undecoded: int = 0  # completed frames not yet pushed to the codec (decode_chunk > 1)


class Generator:
    def __init__(
        self, model: MusicGen, params: SamplingParams | None = None, seed: int = 0, decode_chunk: int = 1
    ) -> None:
        """`decode_chunk`: completed frames gathered per codec push. 1 (live) releases audio as soon
        as it is final; offline rendering gathers more to save per-call overhead. The samples are the
        same either way (the decoder is chunking-invariant)."""
        self.model = model
        self.params = (params or SamplingParams()).validated()
        self.seed = seed
        self.decode_chunk = max(1, decode_chunk)
        self.state: StreamState | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @torch.no_grad()
    def start(
        self,
        condition: Condition,
        prompt_codes: torch.Tensor | None = None,
        total_frames: int | None = None,
        capacity_frames: int | None = None,
        emit_prompt_audio: bool = True,
    ) -> StepResult:
        """Prefill and sample the first column. `total_frames` counts prompt frames too."""
        m, pat = self.model, self.model.pattern
        K = m.spec.lm.num_codebooks
        P = 0 if prompt_codes is None else int(prompt_codes.shape[-1])
        if total_frames is not None and total_frames <= P:
            raise ContextError(f"nothing to generate: {total_frames} frames requested with a {P}-frame prompt")
        cap = capacity_frames or total_frames or m.max_frames
        if pat.columns_for_frames(cap) > m.max_columns:
            raise ContextError(
                f"{cap} frames ({cap / m.spec.frame_rate:.1f} s) exceed the model's window of "
                f"{m.max_frames} frames ({m.max_frames / m.spec.frame_rate:.1f} s)"
            )
        guided = self.params.cfg != 1.0
        rows = 2 if guided else 1
        frames = torch.full((K, cap), m.spec.lm.special_token, dtype=torch.long)
        if P:
            frames[:, :P] = prompt_codes.to(torch.long).cpu()
        self.state = st = StreamState(
            cache=m.lm.new_cache(rows, pat.columns_for_frames(cap)),
            cross=condition.cross,
            frames=frames,
            prompt_frames=P,
            total_frames=total_frames,
            column=P,
            guided=guided,
            generator=torch.Generator().manual_seed(self.seed),
            decoder=m.codec.new_stream(batch=m.audio_channels),
            emit_prompt_audio=emit_prompt_audio,
        )
        columns = pat.interleave(frames[:, :P])[:, : P + 1]  # BOS + P columns, all known
        tokens = columns.unsqueeze(0).expand(rows, -1, -1).to(m.device)
        logits = m.lm.forward(tokens, 0, st.cache, st.cross, all_positions=True)
        audio = self._decode(frames[:, :P], prompt=True) if P else self._empty_audio()
        return self._take(logits, P + 1, audio)

    @torch.no_grad()
    def step(self) -> StepResult:
        """Feed the last sampled column, sample the next; return what completed."""
        st = self._require()
        m = self.model
        if self.done:
            raise ContextError("this finite stream is complete")
        if m.pattern.columns_for_frames(st.frames.shape[-1]) <= st.column + 1:
            raise ContextError("the stream reached the end of its context window")
        col = m.pattern.column_from_frames(st.frames, st.column, st.total_frames)
        rows = 2 if st.guided else 1
        tokens = col.view(1, -1, 1).expand(rows, -1, -1).to(m.device)
        logits = m.lm.forward(tokens, st.column, st.cache, st.cross)
        return self._take(logits, st.column + 1, None)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Flush the codec: the held-back samples at the end of a finite stream."""
        st = self._require()
        head = self._decode_pending()
        tail = self._trim(self.model.codec.flush(st.decoder).squeeze(1))
        return torch.cat([head, tail], dim=-1)

    @property
    def done(self) -> bool:
        st = self._require()
        return st.total_frames is not None and st.column >= st.total_frames + self.model.pattern.max_delay

    @property
    def frames_done(self) -> int:
        """Frames complete so far (prompt included)."""
        st = self._require()
        f = st.column - 1 - self.model.pattern.max_delay + 1
        f = max(f, st.prompt_frames)
        return min(f, st.total_frames) if st.total_frames is not None else f

    def codes(self) -> torch.Tensor:
        """(K, frames_done) codes of every complete frame, prompt first."""
        return self._require().frames[:, : self.frames_done].clone()

    # -- internals -----------------------------------------------------------------------------
    def _require(self) -> StreamState:
        if self.state is None:
            raise RuntimeError("call start() first")
        return self.state

    def _take(self, logits: torch.Tensor, column: int, audio: torch.Tensor | None) -> StepResult:
        """Sample column `column` from logits (rows, K, V); record its frames; decode completions."""
        st = self._require()
        p = self.params
        scores = guide(logits[0], logits[1], p.cfg) if st.guided else logits[0]
        tokens = sample(scores, p, st.generator).cpu()
        pat = self.model.pattern
        frame_of = pat.frames_of_column(column)
        for k in range(pat.num_codebooks):
            f = int(frame_of[k])
            if f >= st.prompt_frames and (st.total_frames is None or f < st.total_frames):
                st.frames[k, f] = tokens[k]
        st.column = column
        done = pat.completed_frame(column)
        new_audio = audio if audio is not None else self._empty_audio()
        codes = st.frames[:, :0]
        if done is not None and done >= st.prompt_frames and (st.total_frames is None or done < st.total_frames):
            codes = st.frames[:, done : done + 1]
            st.undecoded += 1
            if st.undecoded >= self.decode_chunk:
                new_audio = torch.cat([new_audio, self._decode_pending()], dim=-1)
        return StepResult(codes=codes.clone(), audio=new_audio)

    def _decode_pending(self) -> torch.Tensor:
        st = self._require()
        if not st.undecoded:
            return self._empty_audio()
        end = self.frames_done
        codes = st.frames[:, end - st.undecoded : end]
        st.undecoded = 0
        return self._decode(codes)

    def _decode(self, codes: torch.Tensor, prompt: bool = False) -> torch.Tensor:
        st = self._require()
        m = self.model
        out = m.codec.push(st.decoder, m.codes_to_codec(codes.to(m.device))).squeeze(1)
        if prompt and not st.emit_prompt_audio:
            st.skip_samples += codes.shape[-1] * m.spec.codec.hop
        return self._trim(out)

    def _trim(self, audio: torch.Tensor) -> torch.Tensor:
        st = self._require()
        if st.skip_samples:
            cut = min(st.skip_samples, audio.shape[-1])
            st.skip_samples -= cut
            audio = audio[..., cut:]
        return audio

    def _empty_audio(self) -> torch.Tensor:
        return torch.zeros((self.model.audio_channels, 0))
