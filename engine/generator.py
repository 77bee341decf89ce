"""One stream of generation: LM state, delay-pattern bookkeeping, sampling and streaming decode.

`start()` prefills BOS plus any prompt frames in one pass and samples the first column; each
`step()` feeds the last sampled column (delay mask applied), samples the next one, and returns
the codes of the frame it completed and the audio samples that became final.

Live use (all changes land between two steps, i.e. at frame boundaries):
- prompts are rows of the batch, one conditional row per active prompt plus one unconditional
  row; guidance mixes them as z = z_u + cfg * sum_i w_i (z_i - z_u). A crossfade adds the new
  prompt's row (its self-attention history copied from the row it replaces) and ramps weights.
- an endless stream slides its context window the way audiocraft does (keep the last `context`
  frames as a fresh prompt re-prefilled from position 1); the new window is prefilled a chunk per
  step in a second cache while the first keeps generating, and swapped in when it has caught up,
  so a slide never stalls the stream.
- `restart()` drops the context (optionally continuing from given codes) and keeps the codec
  stream going, so the audio has no gap.

Units: *frames* are absolute codec frames since the stream began (prompt included); *columns*
are positions in the current window (column 0 = BOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .codec import DecoderState
from .conditioning import Condition
from .errors import ContextError
from .lm import CrossKV, KVCache, Segment
from .model import MusicGen
from .sampling import SamplingParams, sample

MAX_PROMPTS = 4  # conditional rows a live stream may blend at once


@dataclass
class StepResult:
    codes: torch.Tensor  # (K, n) frames completed by this call (n is 0 or 1 per step)
    audio: torch.Tensor  # (channels, samples) that became final


@dataclass
class PromptRow:
    condition: Condition
    weight: float


@dataclass
class Window:
    """One LM context: a KV cache whose column t holds codebook k of frame origin + t - 1 - d_k."""

    cache: KVCache
    origin: int  # absolute frame at the window's first column after BOS
    column: int  # last column sampled (live window) or fed (window being prefilled)


@dataclass
class Fade:
    start: list[float]
    end: list[float]
    frames: int
    done: int = 0


@dataclass
class StreamState:
    """Everything that belongs to one stream; the model holds none of it."""

    window: Window
    rows: list[PromptRow]
    frames: torch.Tensor  # (K, capacity) codes from absolute frame `base` on; special token = unknown
    base: int
    protected: int  # frames below this are given (prompt), never overwritten by sampling
    total_frames: int | None  # finite run length (prompt included); None = endless
    guided: bool  # the batch carries an unconditional row
    generator: torch.Generator
    decoder: DecoderState
    context_frames: int  # frames kept when the window slides
    slide_chunk: int  # columns prefilled per step while a slide is prepared
    slide: Window | None = None  # the next window, being prefilled
    spare: KVCache | None = None  # the cache the next slide will fill (swapped with the live one)
    fade: Fade | None = None
    decoded: int = 0  # frames pushed to the codec
    skip_samples: int = 0  # decoded samples still to drop (prompt audio the listener already has)
    slides: int = 0


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
        self._codec_input: torch.Tensor | None = None  # left by a deferred step (see step_output)

    # -- lifecycle -----------------------------------------------------------------------------
    @torch.no_grad()
    def start(
        self,
        prompts: Condition | list[tuple[Condition, float]],
        prompt_codes: torch.Tensor | None = None,
        total_frames: int | None = None,
        capacity_frames: int | None = None,
        emit_prompt_audio: bool = True,
        max_prompts: int = 1,
        guided: bool | None = None,
        context_frames: int | None = None,
        slide_chunk: int = 16,
    ) -> StepResult:
        """Prefill and sample the first column.

        `total_frames` (prompt included) makes a finite run that ends as the reference ends it;
        None makes an endless stream whose window (`capacity_frames`, default the model's) slides,
        keeping `context_frames`. `guided` defaults to cfg != 1 (as the reference); live streams
        pass True so cfg can change at any time.
        """
        m, pat = self.model, self.model.pattern
        rows = [PromptRow(prompts, 1.0)] if isinstance(prompts, Condition) else [PromptRow(c, w) for c, w in prompts]
        if not 1 <= len(rows) <= max(max_prompts, 1):
            raise ContextError(f"between 1 and {max_prompts} prompts can play at once, got {len(rows)}")
        P = 0 if prompt_codes is None else int(prompt_codes.shape[-1])
        if total_frames is not None and total_frames <= P:
            raise ContextError(f"nothing to generate: {total_frames} frames requested with a {P}-frame prompt")
        cap = capacity_frames or total_frames or m.max_frames
        if cap > m.max_frames:
            finite = "; longer pieces need the streaming engine (serve)" if total_frames is not None else ""
            raise ContextError(
                f"{cap} frames ({cap / m.spec.frame_rate:.1f} s{', prompt included' if P else ''}) exceed the "
                f"model's window of {m.max_frames} frames ({m.max_frames / m.spec.frame_rate:.1f} s){finite}"
            )
        context = min(context_frames if context_frames is not None else cap // 2, cap)
        guided = (self.params.cfg != 1.0) if guided is None else guided
        batch = max(max_prompts, len(rows)) + (1 if guided else 0)
        K = m.spec.lm.num_codebooks
        columns = pat.columns_for_frames(cap)
        if total_frames is None:
            margin = self._slide_margin(context, slide_chunk)
            if context + pat.max_delay + 1 + margin >= columns:
                raise ContextError(
                    f"a {cap}-frame window cannot keep {context} frames of context and still slide "
                    f"(needs {context + pat.max_delay + 2 + margin} columns)"
                )
        buffer = cap if total_frames is not None else 2 * cap
        self.state = st = StreamState(
            window=Window(cache=m.lm.new_cache(batch, columns), origin=0, column=0),
            rows=rows,
            frames=torch.full((K, buffer), m.spec.lm.special_token, dtype=torch.long),
            base=0,
            protected=P,
            total_frames=total_frames,
            guided=guided,
            generator=torch.Generator().manual_seed(self.seed),
            decoder=m.codec.new_stream(batch=m.audio_channels),
            context_frames=context,
            slide_chunk=max(2, slide_chunk),
        )
        if P:
            st.frames[:, :P] = prompt_codes.to(torch.long).cpu()
            if not emit_prompt_audio:
                st.skip_samples = P * m.spec.codec.hop
        return self._prefill(origin=0, prompt_frames=P)

    @torch.no_grad()
    def step(self) -> StepResult:
        """Feed the last sampled column, sample the next; return what completed."""
        tokens, segment = self.step_input()
        return self.step_output(self.model.lm.forward_segments(tokens, [segment]))

    def step_input(self) -> tuple[torch.Tensor, Segment]:
        """What the next step feeds the LM: tokens (rows, K, 1) and where they go. A `Batch` gathers
        these from several streams into one forward; `step_output` takes this stream's logits back."""
        st = self._require()
        if self.done:
            raise ContextError("this finite stream is complete")
        win = st.window
        if win.column + 1 >= win.cache.capacity:
            raise ContextError("the stream reached the end of its context window")
        tokens = self._columns(win, win.column, 1)
        return tokens, Segment(tokens.shape[0], win.column, win.cache, self._crosses())

    @torch.no_grad()
    def step_output(self, logits: torch.Tensor, defer_decode: bool = False) -> StepResult:
        """Finish the step begun by `step_input`, from this stream's logits (rows, K, V).

        With `defer_decode` the codes due for the codec are not decoded here: they are handed out
        by `take_codec_input` (and the result's audio stays empty) so that a `Batch` can decode
        several streams in one codec call and give each its samples through `decoded`."""
        st = self._require()
        result = self._take(logits, st.window.column + 1, defer_decode)
        if st.total_frames is None:
            self._advance_slide()
        self._advance_fade()
        return result

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Flush the codec: the held-back samples at the end of a finite stream."""
        st = self._require()
        head = self._decode_upto(self.frames_done)
        tail = self._trim(self.model.codec.flush(st.decoder).squeeze(1))
        return torch.cat([head, tail], dim=-1)

    # -- live controls (between steps) ---------------------------------------------------------
    def set_params(self, params: SamplingParams) -> None:
        st = self._require()
        params = params.validated()
        if not st.guided and params.cfg != 1.0:
            raise ContextError("this stream was started without guidance; cfg must stay 1")
        self.params = params

    def set_context(self, frames: int) -> int:
        """Frames kept at the next window slide (clamped so the window can still slide); returns it."""
        st = self._require()
        cap = st.window.cache.capacity - 1 - self.model.pattern.max_delay
        frames = max(1, min(int(frames), cap // 2))
        st.context_frames = frames
        st.slide = None
        return frames

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._require().generator.manual_seed(seed)

    @torch.no_grad()
    def set_prompts(self, prompts: list[tuple[Condition, float]], fade_frames: int = 0) -> None:
        """Blend to `prompts` (weights normalised to sum 1) over `fade_frames` frames.

        Rows already playing keep their history; a new prompt's row starts from a copy of the
        currently loudest row's history, so it continues the music rather than starting over.
        """
        st = self._require()
        if not prompts:
            raise ContextError("at least one prompt is needed")
        total = sum(w for _, w in prompts)
        if total <= 0 or any(w < 0 for _, w in prompts):
            raise ContextError("prompt weights must be >= 0 and not all zero")
        target: dict[str, tuple[Condition, float]] = {}
        for cond, w in prompts:
            prev = target.get(cond.text)
            target[cond.text] = (cond, (prev[1] if prev else 0.0) + w / total)
        old = {r.condition.text: i for i, r in enumerate(st.rows)}
        kept = [i for i, r in enumerate(st.rows) if r.condition.text in target or fade_frames > 0]
        new = [t for t in target if t not in old]
        n_cond = len(kept) + len(new)
        if n_cond > self._max_rows():
            raise ContextError(
                f"at most {self._max_rows()} prompts can sound at once (a fade needs old and new together)"
            )
        source = max(range(len(st.rows)), key=lambda i: st.rows[i].weight)
        order = kept + [source] * len(new) + ([len(st.rows)] if st.guided else [])
        self._rearrange(order)
        rows = [st.rows[i] for i in kept] + [PromptRow(target[t][0], 0.0) for t in new]
        end = [target[r.condition.text][1] if r.condition.text in target else 0.0 for r in rows]
        for r in rows:  # refresh conditions (same text, maybe recomputed by the conditioner)
            if r.condition.text in target:
                r.condition = target[r.condition.text][0]
        st.rows = rows
        st.slide = None  # a window being prepared has the old rows: start it again
        if fade_frames > 0:
            st.fade = Fade(start=[r.weight for r in rows], end=end, frames=fade_frames)
        else:
            for r, w in zip(rows, end):
                r.weight = w
            st.fade = None
            self._drop_silent_rows()

    @torch.no_grad()
    def restart(self, prompt_codes: torch.Tensor | None = None, keep_audio: bool = True) -> StepResult:
        """Drop the context and start again, from `prompt_codes` (K, P) if given.

        With `keep_audio` the codec stream goes on, so the new material follows the old without a
        gap; without it the codec is reset too (a hard stop).
        """
        st = self._require()
        m = self.model
        if st.total_frames is not None:
            raise ContextError("a finite run cannot restart; start a new one")
        audio = self._decode_upto(self.frames_done)
        if not keep_audio:
            m.codec.reset(st.decoder)
            st.skip_samples = 0
            audio = self._empty_audio()
        start = self.frames_done
        P = 0 if prompt_codes is None else int(prompt_codes.shape[-1])
        origin = start - P
        if P > st.context_frames + 1 and st.total_frames is None:
            raise ContextError(f"a {P}-frame prompt does not fit the {st.context_frames}-frame context")
        self._rebase(min(origin, start))
        st.frames[:, start - st.base :] = m.spec.lm.special_token
        if P:
            st.frames[:, origin - st.base : start - st.base] = prompt_codes.to(torch.long).cpu()
        st.protected = start
        st.slide = None
        first = self._prefill(origin=origin, prompt_frames=P)
        return StepResult(codes=first.codes, audio=torch.cat([audio, first.audio], dim=-1))

    # -- queries -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        st = self._require()
        return st.total_frames is not None and self._sampled_upto() >= st.total_frames + self.model.pattern.max_delay

    @property
    def frames_done(self) -> int:
        """Frames complete so far (prompt included), counted from the start of the stream."""
        st = self._require()
        f = max(self._sampled_upto() - self.model.pattern.max_delay, st.protected)
        return min(f, st.total_frames) if st.total_frames is not None else f

    @property
    def slides(self) -> int:
        return self._require().slides

    @property
    def rows(self) -> list[PromptRow]:
        return self._require().rows

    def codes(self) -> torch.Tensor:
        """(K, frames) codes of every complete frame still held (all of a finite run)."""
        st = self._require()
        return st.frames[:, : self.frames_done - st.base].clone()

    # -- internals: windows --------------------------------------------------------------------
    def _require(self) -> StreamState:
        if self.state is None:
            raise RuntimeError("call start() first")
        return self.state

    def _max_rows(self) -> int:
        st = self._require()
        return st.window.cache.batch - (1 if st.guided else 0)

    def _n_rows(self) -> int:
        st = self._require()
        return len(st.rows) + (1 if st.guided else 0)

    def _crosses(self) -> list[CrossKV]:
        return [r.condition.cross for r in self._require().rows]

    def _sampled_upto(self) -> int:
        """One past the last absolute frame whose codebook 0 has been sampled."""
        win = self._require().window
        return win.origin + win.column

    def _columns(self, win: Window, first: int, count: int) -> torch.Tensor:
        """Input columns first..first+count-1 of `win`, delay mask applied, one copy per row."""
        st = self._require()
        cols = self.model.pattern.columns(st.frames, st.base, win.origin, first, count, st.total_frames)
        return cols.unsqueeze(0).expand(self._n_rows(), -1, -1).to(self.model.device)

    def _prefill(self, origin: int, prompt_frames: int) -> StepResult:
        """Start the live window at `origin`: feed BOS + the prompt frames at once, sample the next."""
        st = self._require()
        m = self.model
        st.window = Window(cache=st.window.cache, origin=origin, column=0)
        tokens = self._columns(st.window, 0, prompt_frames + 1)
        logits = m.lm.forward(tokens, 0, st.window.cache, self._crosses(), all_positions=True)
        return self._take(logits, prompt_frames + 1)

    @staticmethod
    def _slide_margin(context: int, chunk: int) -> int:
        """Columns before the end of a window at which a slide must begin to finish in time."""
        backlog = context + 8
        return -(-backlog // (max(2, chunk) - 1)) + 4

    def _advance_slide(self) -> None:
        """Prepare the next window a chunk per step; swap it in once it has caught up."""
        st = self._require()
        m, pat = self.model, self.model.pattern
        win = st.window
        if st.slide is None:
            if win.column + self._slide_margin(st.context_frames, st.slide_chunk) < win.cache.capacity:
                return
            complete = self._sampled_upto() - pat.max_delay
            if st.spare is None:
                st.spare = m.lm.new_cache(win.cache.batch, win.cache.capacity)
            st.slide = Window(cache=st.spare, origin=complete - st.context_frames, column=0)
        nxt = st.slide
        target = win.origin + win.column - nxt.origin  # its column equal to the live one
        count = min(st.slide_chunk, target - nxt.column)
        if count > 0:
            m.lm.forward(self._columns(nxt, nxt.column, count), nxt.column, nxt.cache, self._crosses())
            nxt.column += count
        if nxt.column == target:
            st.spare, st.window = win.cache, Window(cache=nxt.cache, origin=nxt.origin, column=target)
            st.slide = None
            st.slides += 1
            self._rebase(min(nxt.origin, st.decoded))

    def _rebase(self, first: int) -> None:
        """Make the frame buffer start at absolute frame `first`, keeping what overlaps."""
        st = self._require()
        if first == st.base:
            return
        old, old_base = st.frames, st.base
        st.frames = torch.full_like(old, self.model.spec.lm.special_token)
        lo, hi = max(first, old_base), min(first, old_base) + old.shape[1]
        if hi > lo:
            st.frames[:, lo - first : hi - first] = old[:, lo - old_base : hi - old_base]
        st.base = first

    def _rearrange(self, order: list[int]) -> None:
        """Cache row r <- old row order[r] (over the filled columns of the live window)."""
        st = self._require()
        st.window.cache.rearrange_rows(order, st.window.column + 1)

    def _advance_fade(self) -> None:
        st = self._require()
        fade = st.fade
        if fade is None:
            return
        fade.done += 1
        a = min(1.0, fade.done / fade.frames)
        for r, s, e in zip(st.rows, fade.start, fade.end):
            r.weight = s + (e - s) * a
        if fade.done >= fade.frames:
            st.fade = None
            self._drop_silent_rows()

    def _drop_silent_rows(self) -> None:
        st = self._require()
        keep = [i for i, r in enumerate(st.rows) if r.weight > 0]
        if len(keep) == len(st.rows):
            return
        self._rearrange(keep + ([len(st.rows)] if st.guided else []))
        st.rows = [st.rows[i] for i in keep]
        st.slide = None

    # -- internals: sampling and decoding ------------------------------------------------------
    def _mix(self, logits: torch.Tensor) -> torch.Tensor:
        """Rows' logits (rows, K, V) -> guided scores (K, V), in the reference's op order for one row."""
        st = self._require()
        n = len(st.rows)
        if not st.guided:
            if n == 1 and st.rows[0].weight == 1.0:
                return logits[0]
            return sum(r.weight * logits[i] for i, r in enumerate(st.rows))
        u = logits[n]
        if n == 1:
            d = logits[0] - u if st.rows[0].weight == 1.0 else (logits[0] - u) * st.rows[0].weight
        else:
            d = sum(r.weight * (logits[i] - u) for i, r in enumerate(st.rows))
        return u + d * self.params.cfg

    def _take(self, logits: torch.Tensor, column: int, defer_decode: bool = False) -> StepResult:
        """Sample window column `column` from logits (rows, K, V); record it; decode completions."""
        st = self._require()
        pat = self.model.pattern
        tokens = sample(self._mix(logits), self.params, st.generator).tolist()
        win = st.window
        held = st.frames.numpy()  # a view: element writes through numpy cost ~0.1 us, through torch ~5
        for k, d in enumerate(pat.delays):
            f = win.origin + column - 1 - d
            if f >= max(st.protected, win.origin) and (st.total_frames is None or f < st.total_frames):
                held[k, f - st.base] = tokens[k]
        win.column = column
        done = win.origin + column - 1 - pat.max_delay
        codes = st.frames[:, :0]
        audio = self._empty_audio()
        if done >= st.protected and (st.total_frames is None or done < st.total_frames):
            codes = st.frames[:, done - st.base : done - st.base + 1].clone()
        if self.frames_done - st.decoded >= self.decode_chunk:
            if defer_decode:
                self._codec_input = self._codes_for_codec(self.frames_done)
            else:
                audio = self._decode_upto(self.frames_done)
        return StepResult(codes=codes, audio=audio)

    def take_codec_input(self) -> torch.Tensor | None:
        """Codes (channels, K / channels, n) a deferred step left for the codec, or None."""
        codes, self._codec_input = self._codec_input, None
        return codes

    def decoded(self, out: torch.Tensor) -> torch.Tensor:
        """The codec's output (channels, 1, n) for `take_codec_input`'s codes -> this stream's audio."""
        return self._trim(out.squeeze(1))

    def _codes_for_codec(self, end: int) -> torch.Tensor | None:
        """The complete frames not yet decoded, up to `end`, in the codec's layout (marked decoded)."""
        st = self._require()
        m = self.model
        if end <= st.decoded:
            return None
        codes = st.frames[:, st.decoded - st.base : end - st.base].clone()
        st.decoded = end
        return m.codes_to_codec(codes.to(m.device))

    def _decode_upto(self, end: int) -> torch.Tensor:
        codes = self._codes_for_codec(end)
        if codes is None:
            return self._empty_audio()
        return self.decoded(self.model.codec.push(self._require().decoder, codes))

    def _trim(self, audio: torch.Tensor) -> torch.Tensor:
        st = self._require()
        if st.skip_samples:
            cut = min(st.skip_samples, audio.shape[-1])
            st.skip_samples -= cut
            audio = audio[..., cut:]
        return audio

    def _empty_audio(self) -> torch.Tensor:
        return torch.zeros((self.model.audio_channels, 0))
