"""One stream of generation: LM state, delay-pattern bookkeeping, sampling and streaming decode.

`start()` prefills BOS plus any prompt frames in one pass and samples the first column; each
`step()` feeds the last sampled column (delay mask applied), samples the next one, and returns
the codes of the frame it completed and the audio samples that became final.

Live use (all changes land between two steps, i.e. at frame boundaries):
- prompts are rows of the batch, one conditional row per active prompt plus one unconditional
  row; guidance mixes them as z = z_u + cfg * sum_i w_i (z_i - z_u). A crossfade adds the new
  prompt's row (its self-attention history copied from the row it replaces) and ramps weights.
- an endless stream slides its context window the way audiocraft does (keep the last `context`
  frames as a fresh prompt re-prefilled from position 1);
- `continue_from(codes)` restarts the context from given codes (a continuation) without a gap.

The stream's phase says what the spare KV cache is doing (`Phase`): nothing (PLAYING), holding
the next window being prefilled from the stream's own frames (SLIDING), or holding a window being
prefilled from given codes (CONTINUING). Either preparation advances a chunk of columns per step -
inside the live step's own forward where it can, so the weights are read once - and is swapped in
when ready. Every command leaves a state from which the next step is valid: a prompt change during
a preparation re-arranges the rows of both caches alike, a context change applies from the next
slide, and a preparation that was delayed catches up in larger chunks rather than miss the end of
the live window. A crossfade (`fading`) runs alongside any phase.

A melody checkpoint's stream is conditioned by a prefix (chroma and text states) in the first cache
slots of each window, not by cross-attention: every window a slide or continuation prepares is fed
its prefix first, and `set_condition` (a new melody or prompt) prepares a window under the new one
at once, like a slide. A MusicGen-Style stream works the same way (style and text states) and may
carry a third row, style alone, between its prompt row and the unconditional one: MusicGen-Style's
double guidance (`SamplingParams.cfg_beta`).

Units: *frames* are absolute codec frames since the stream began (prompt included); *columns*
are positions in the current window (column 0 = BOS).

The state it moves is typed in `engine.stream_state`; the prompt rows, their crossfade and the
guidance that mixes them are `engine.prompt_rows` (this machine applies the cache-row orders they
return). One idea at ~820 lines: one state machine, whose transitions (steps, slides,
continuations, prompt changes, conditions) must each leave a state the next step can run from;
they read and write the same windows and caches, so they stay together.
"""

from __future__ import annotations

import torch

from .codec import DecoderState
from .conditioning import Condition
from .errors import ContextError
from .kvcache import CrossKV, KVCache, PrefixKV
from .lm import Segment
from .model import MusicGen
from .prompt_rows import PromptRow, PromptRows
from .sampling import SamplingParams, sample
from .stream_state import (
    MIN_CHUNK,
    Continuation,
    Phase,
    Slide,
    StepResult,
    StreamState,
    Window,
)

MAX_SLIDE_CHUNK = 16  # start raises a slide's columns a step up to this before it refuses a context
DOUBLE_NEEDS = "cfg_beta (double guidance) needs a MusicGen-Style checkpoint's stream with a style-alone row"
PREFIX_TEXT_ROOM = 64  # text positions a live melody stream keeps room for in its prefix (T5 tokens)


class StreamGenerator:
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
        self._planned: Segment | None = None  # the preparation's chunk fed inside the current step's forward

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
        continue_chunk: int | None = None,
    ) -> StepResult:
        """Prefill and sample the first column.

        `total_frames` (prompt included) makes a finite run that ends as the reference ends it;
        None makes an endless stream whose window (`capacity_frames`, default the model's) slides,
        keeping `context_frames`. `guided` defaults to cfg != 1 (as the reference); live streams
        pass True so cfg can change at any time. `slide_chunk`: columns a slide or continuation
        prefills per step (more: it finishes sooner; fewer: a cheaper step); `continue_chunk`:
        the same for a continuation riding on the live steps (default `slide_chunk`; it may be 1,
        as a continuation need not gain on the live window).
        """
        m, pat = self.model, self.model.pattern
        if not m.streams:
            raise ContextError(
                f"this checkpoint's '{m.codebook_pattern.describe()}' codebook pattern renders (render) but does "
                "not stream yet: the live engine steps delay patterns"
            )
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
        K = m.spec.lm.num_codebooks
        columns = pat.columns_for_frames(cap)
        prefix = self._prefix_for(rows, columns, guided)
        style_row = prefix is not None and prefix.states.shape[0] == 3
        if self.params.cfg_beta is not None and not style_row:
            raise ContextError(DOUBLE_NEEDS)
        prompt_rows = PromptRows(rows, guided, style_row, capacity=max(max_prompts, len(rows)))
        batch = prompt_rows.capacity + prompt_rows.tail
        lead = 0 if prefix is None else prefix.length
        chunk = max(MIN_CHUNK, slide_chunk)
        if total_frames is None:
            sliding = self._slide_chunk(context, chunk, columns, lead)
            if sliding is None:
                need = context + pat.max_delay + 2 + 2 * _slide_margin(context + lead, max(chunk, MAX_SLIDE_CHUNK))
                raise ContextError(
                    f"a {cap}-frame window cannot keep {context} frames of context and still slide "
                    f"(needs {need} columns)"
                )
            chunk = sliding
        buffer = cap if total_frames is not None else 2 * cap
        # A melody prefix takes the first slots; a live stream keeps room for a longer one (a new
        # prompt's text) up to the model's positions.
        audio_room = m.spec.lm.chroma_length + m.spec.lm.style_frames
        room = lead if total_frames is not None else max(lead, audio_room + PREFIX_TEXT_ROOM)
        prefix_slots = 0 if prefix is None else min(room, m.spec.lm.max_positions - columns)
        slots = columns + prefix_slots
        self.state = st = StreamState(
            window=Window(cache=m.lm.new_cache(batch, slots), origin=0, column=0, columns=columns, prefix=prefix),
            prompts=prompt_rows,
            frames=torch.full((K, buffer), m.spec.lm.special_token, dtype=torch.long),
            base=0,
            protected=P,
            total_frames=total_frames,
            generator=torch.Generator().manual_seed(self.seed),
            decoder=m.codec.new_stream(batch=m.audio_channels),
            context_frames=context,
            chunk=chunk,
            continue_chunk=max(1, continue_chunk or chunk),
            prefix=prefix,
            prefix_slots=prefix_slots,
            # an endless stream's second cache, allocated now: zeroing ~1 GB (small) at the first
            # slide stalled that step for ~1.8 s
            spare=m.lm.new_cache(batch, slots) if total_frames is None else None,
        )
        if prompt_codes is not None and P:
            st.frames[:, :P] = prompt_codes.to(torch.long).cpu()
            if not emit_prompt_audio:
                st.skip_samples = P * m.spec.codec.hop
        return self._prefill(prompt_frames=P)

    @torch.no_grad()
    def step(self) -> StepResult:
        """Feed the last sampled column, sample the next; return what completed. A preparation in
        progress rides along in the same forward (one read of the weights for both)."""
        tokens, segment = self.step_input()
        prep = self._prep_input(after_step=False)
        if prep is None:
            logits = self.model.lm.forward_segments(tokens, [segment])
        else:
            logits = self.model.lm.forward_segments([tokens, prep[0]], [segment, prep[1]])
            self._planned = prep[1]
        return self.step_output(logits)

    def step_input(self) -> tuple[torch.Tensor, Segment]:
        """What the next step feeds the LM: tokens (rows, K, 1) and where they go. A `Batch` gathers
        these from several streams into one forward; `step_output` takes this stream's logits back."""
        st = self._require()
        self._planned = None
        if self.done:
            raise ContextError("this finite stream is complete")
        win = st.window
        if win.column + 1 >= win.columns:  # cannot happen while preparations keep their deadlines
            raise ContextError("the stream reached the end of its context window")
        tokens = self._columns(win, win.column, 1)
        return tokens, Segment(tokens.shape[0], win.column, win.cache, self._crosses(), offset=win.offset)

    @torch.no_grad()
    def step_output(self, logits: torch.Tensor, defer_decode: bool = False) -> StepResult:
        """Finish the step begun by `step_input`, from this stream's logits (rows, K, V).

        With `defer_decode` the codes due for the codec are not decoded here: they are handed out
        by `take_codec_input` (and the result's audio stays empty) so that a `Batch` can decode
        several streams in one codec call and give each its samples through `decoded`."""
        st = self._require()
        codes = self._record(logits, st.window.column + 1)
        if self.frames_done - st.decoded >= self.decode_chunk:
            self._queue_codec(self.frames_done)
        self._advance_preparation()
        self._rearrange(st.prompts.advance_fade())
        audio = self._empty_audio() if defer_decode else self._decode_queue()
        return StepResult(codes=codes, audio=audio)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Flush the codec: the held-back samples at the end of a finite stream."""
        st = self._require()
        self._queue_codec(self.frames_done)
        head = self._decode_queue()
        tail = self._trim(self.model.codec.flush(st.decoder).squeeze(1))
        return torch.cat([head, tail], dim=-1)

    # -- live controls (between steps) ---------------------------------------------------------
    def set_params(self, params: SamplingParams) -> None:
        st = self._require()
        params = params.validated()
        if not st.prompts.guided and params.cfg != 1.0:
            raise ContextError("this stream was started without guidance; cfg must stay 1")
        if params.cfg_beta is not None and not st.prompts.style_row:
            raise ContextError(DOUBLE_NEEDS)
        self.params = params

    def set_continue_chunk(self, columns: int) -> None:
        """Columns a continuation prefills per step from now on (>= 1): more is ready sooner, at
        a dearer step. A continuation under way takes the new size from its next chunk."""
        self._require().continue_chunk = max(1, int(columns))

    def set_context(self, frames: int) -> int:
        """Frames kept at the next window slide (clamped so the window can still slide); returns
        it. A slide already being prepared keeps the context it started with."""
        st = self._require()
        st.context_frames = max(1, min(int(frames), self.max_context))
        return st.context_frames

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._require().generator.manual_seed(seed)

    @torch.no_grad()
    def set_prompts(self, prompts: list[tuple[Condition, float]], fade_frames: int = 0) -> int:
        """Blend to `prompts` (weights normalised to sum 1) over `fade_frames` frames. Returns how
        many old prompts stopped at once instead of fading out (0 unless old and new together are
        more than the rows a stream has: the quietest leaving ones go first).

        Rows already playing keep their history; a new prompt's row starts from a copy of the
        currently loudest row's history, so it continues the music rather than starting over.
        A window being prepared gets the same rows, so a slide or continuation carries on.
        """
        st = self._require()
        if st.prefix is not None:
            raise ContextError(
                "a melody stream changes its prompt and melody together (set_condition), without a crossfade"
            )
        order, cut = st.prompts.blend_to(prompts, fade_frames)
        self._rearrange(order)
        return cut

    @torch.no_grad()
    def set_condition(self, condition: Condition) -> PrefixKV:
        """A melody stream's new condition (melody and/or text, `engine.melody`). The window is
        prefilled again under it - from now, a chunk per step like a slide, the prefix first - and
        it is heard from the frame that window takes over: `condition_live(handle)` says when. A
        continuation being prepared starts its prefill over under it; a slide too late to start
        over finishes first and the next begins at once."""
        st = self._require()
        if st.prefix is None:
            raise ContextError("only a melody checkpoint's stream takes a melody condition")
        rows = st.prompts
        prefix = self._checked_prefix(
            condition, st.window.columns, rows.guided, rows.style_row, st.window.cache.capacity
        )
        st.prefix = prefix
        # a longer prefix (more text) takes longer to prefill: keep only the context that still slides
        st.context_frames = min(st.context_frames, self._fit_context(st.window.columns, st.chunk, prefix.length))
        rows.replace(condition)
        prep = st.prep
        if isinstance(prep, Continuation):
            st.prep = None
            prep.fed = 0
            if self._fits(prep.frames + prefix.length):
                self._activate(prep)
            else:
                st.queued = prep
                self._begin_slide()
        elif prep is None or _slide_margin(st.context_frames + prefix.length, st.chunk) <= self._steps_left():
            self._begin_slide()  # (a slide under the old condition is dropped)
        return prefix

    def condition_live(self, prefix: PrefixKV) -> bool:
        """Whether the window now playing was prefilled under `prefix` (from `set_condition`)."""
        return self._require().window.prefix is prefix

    def continue_from(self, codes: torch.Tensor) -> Continuation:
        """Continue the stream from `codes` (K, P): the last `context` frames of them become the
        new context, prefilled a chunk per step while the music goes on, and the stream carries on
        from them without a gap once they are in (`Continuation.frame`). A continuation not yet
        taken over is superseded by this one."""
        st = self._require()
        if st.total_frames is not None:
            raise ContextError("a finite run cannot continue from other material; start a new one")
        if codes.dim() != 2 or codes.shape[0] != self.model.spec.lm.num_codebooks or codes.shape[-1] < 1:
            raise ContextError(f"continuation codes must be ({self.model.spec.lm.num_codebooks}, frames)")
        codes = codes[:, -st.context_frames :].to(torch.long).cpu()
        cont = self._continuation(codes)
        self._supersede()
        if not self._fits(cont.frames + self._lead(), st.continue_chunk):
            # At its own pace it could not be ready before the live window ends (catching up
            # would take dearer chunks): slide first - now -, then it has the fresh window's steps.
            st.queued = cont
            if st.prep is None:
                self._begin_slide()
        else:
            self._activate(cont)
        return cont

    @torch.no_grad()
    def prepare(self) -> None:
        """For a stream that is not stepping (paused, stopped): prefill one chunk of the pending
        continuation between turns, and let it take over once complete. A chunk at a time, so that
        streams stepping in the same thread are not held up."""
        st = self._require()
        cont = self.continuation
        if cont is None:
            return
        if st.queued is cont:
            self._activate(cont, deadline=False)  # the slide it waited for is moot: the window restarts
        if _prefix_left(cont) or cont.remaining:
            tokens, seg = self._prep_chunk(cont, st.chunk)
            self.model.lm.forward_segments(tokens, [seg])
            self._account(cont, seg)
        if not _prefix_left(cont) and cont.remaining == 0:
            self._swap_in(cont)

    def cancel(self, cont: Continuation) -> None:
        """Drop `cont` if it has not taken over yet (the stream plays on as it was)."""
        st = self._require()
        if cont.frame is not None:
            return
        cont.superseded = True
        if st.queued is cont:
            st.queued = None
        if st.prep is cont:
            st.prep = None

    @torch.no_grad()
    def restart(self, prompt_codes: torch.Tensor | None = None, keep_audio: bool = True) -> StepResult:
        """Drop the context now and start again, from `prompt_codes` (K, P) if given (prefilled at
        once - live streams use `continue_from`, which spreads that over steps).

        With `keep_audio` the codec stream goes on, so the new material follows the old without a
        gap; without it the codec is reset too (a hard stop).
        """
        st = self._require()
        if st.total_frames is not None:
            raise ContextError("a finite run cannot restart; start a new one")
        K = self.model.spec.lm.num_codebooks
        codes = torch.zeros(K, 0, dtype=torch.long) if prompt_codes is None else prompt_codes
        codes = codes[:, codes.shape[-1] - min(codes.shape[-1], st.context_frames) :].to(torch.long).cpu()
        cont = self._continuation(codes)
        self._supersede()
        st.prep = None  # a slide being prepared is moot: the window starts again
        if cont.frames:
            self._activate(cont, deadline=False)
        else:  # no codes: start again in place (a melody stream's prefix stays if it is the current one)
            cont.cache, cont.prefix = st.window.cache, st.prefix
            in_place = st.prefix is not None and st.prefix is st.window.prefix
            cont.prefix_fed = st.prefix.length if in_place and st.prefix is not None else 0
        self._feed_all(cont)
        self._swap_in(cont)
        audio = self._decode_queue()
        if not keep_audio:
            self.model.codec.reset(st.decoder)
            st.skip_samples = 0
            audio = self._empty_audio()
        return StepResult(codes=st.frames[:, :0], audio=audio)

    # -- queries -------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.state is not None

    @property
    def decoder(self) -> DecoderState:
        """This stream's codec state (a `Batch` decodes several streams' frames together)."""
        return self._require().decoder

    @property
    def phase(self) -> Phase:
        prep = self._require().prep
        return Phase.PLAYING if prep is None else Phase.SLIDING if isinstance(prep, Slide) else Phase.CONTINUING

    @property
    def fading(self) -> bool:
        return self._require().prompts.fade is not None

    @property
    def continuation(self) -> Continuation | None:
        """The continuation being prepared or waiting for a slide, if any."""
        st = self._require()
        return st.prep if isinstance(st.prep, Continuation) else st.queued

    @property
    def done(self) -> bool:
        st = self._require()
        return st.total_frames is not None and self.next_frame >= st.total_frames + self.model.pattern.max_delay

    @property
    def next_frame(self) -> int:
        """The first frame whose first codebook the next step samples: a command applied now is
        heard from this frame on."""
        win = self._require().window
        return win.origin + win.column

    @property
    def frames_done(self) -> int:
        """Frames complete so far (prompt included), counted from the start of the stream."""
        st = self._require()
        f = max(self.next_frame - self.model.pattern.max_delay, st.protected)
        return min(f, st.total_frames) if st.total_frames is not None else f

    @property
    def slides(self) -> int:
        return self._require().slides

    @property
    def rows(self) -> list[PromptRow]:
        return self._require().prompts.rows

    @property
    def context_frames(self) -> int:
        return self._require().context_frames

    @property
    def slide_chunk(self) -> int:
        """Columns a slide feeds per step (what `start` was asked for, or more where fewer would
        not keep the window sliding)."""
        return self._require().chunk

    @property
    def max_context(self) -> int:
        """The most frames of context this stream's window can keep and still slide."""
        st = self._require()
        return self._fit_context(st.window.columns, st.chunk, self._lead())

    def context_that_slides(self, capacity_frames: int, context_frames: int, slide_chunk: int, lead: int = 0) -> int:
        """The most of `context_frames` an endless stream of `capacity_frames` can keep and still
        slide at `slide_chunk` columns a step, feeding `lead` prefix positions first (a melody
        prefix's): what to ask `start` for (it refuses a context that cannot slide)."""
        columns = self.model.pattern.columns_for_frames(min(capacity_frames, self.model.max_frames))
        chunk = max(MIN_CHUNK, slide_chunk, MAX_SLIDE_CHUNK)  # start takes a larger chunk before less context
        return min(context_frames, self._fit_context(columns, chunk, lead))

    def _fit_context(self, columns: int, chunk: int, lead: int) -> int:
        frames = (columns - 1 - self.model.pattern.max_delay) // 2
        while frames > 1 and not self._can_slide(frames, chunk, columns, lead):
            frames -= 1
        return frames

    def codes(self) -> torch.Tensor:
        """(K, frames) codes of every complete frame still held (all of a finite run)."""
        st = self._require()
        return st.frames[:, : self.frames_done - st.base].clone()

    # -- internals: windows --------------------------------------------------------------------
    def _require(self) -> StreamState:
        if self.state is None:
            raise RuntimeError("call start() first")
        return self.state

    def _crosses(self) -> list[CrossKV]:
        """The rows' cross-attention K/V (none for a melody stream: its prefix conditions it)."""
        st = self._require()
        return [] if st.prefix is not None else [r.condition.kv for r in st.prompts.rows]

    def _prefix_for(self, rows: list[PromptRow], columns: int, guided: bool) -> PrefixKV | None:
        """A melody checkpoint's stream: its prefix, checked against the window's `columns` (None
        for a cross-attention one)."""
        if not self.model.spec.lm.prefix_conditioned:
            return None
        if len(rows) != 1:
            raise ContextError("a melody checkpoint plays one melody condition (engine.melody) at a time")
        prefix = rows[0].condition.prefix
        style_row = guided and prefix is not None and prefix.shape[0] == 3
        return self._checked_prefix(rows[0].condition, columns, guided, style_row)

    def _checked_prefix(
        self, condition: Condition, columns: int, guided: bool, style_row: bool, slots: int | None = None
    ) -> PrefixKV:
        """`condition`'s prefix, if it fits a window of `columns` (and `slots` cache slots) and has
        the rows the stream runs (prompt, then style-alone and unconditional ones as it has them)."""
        spec = self.model.spec.lm
        prefix = condition.prefix
        if prefix is None:
            raise ContextError("a melody or style checkpoint plays a prefix condition (engine.melody, engine.style)")
        if prefix.shape[0] != 1 + (1 if guided else 0) + (1 if style_row else 0):
            raise ContextError("the prefix condition was built for a different guidance setting")
        limit = spec.max_positions if slots is None else min(slots, spec.max_positions)
        if prefix.shape[1] + columns > limit:
            raise ContextError(
                f"a {prefix.shape[1]}-position melody prefix (chroma and text) and a {columns}-column window "
                f"exceed the {limit} positions {'this stream keeps' if slots is not None else 'of the model'} "
                "(a shorter prompt fits)"
            )
        return PrefixKV(states=prefix)

    def _can_slide(self, context: int, chunk: int, columns: int, lead: int = 0) -> bool:
        """Whether a window of `columns` keeping `context` frames can keep sliding at `chunk`
        columns a step, feeding `lead` prefix positions first: a slide begins `margin` columns
        before the window's end, and the window it makes (the context plus the columns played
        while it was prefilled, about `margin` more) must start before the next slide is due.
        Otherwise the stream slides without end, every slide late and catching up in larger
        chunks (musicgen-small's 12 s in a 30 s window at 2 columns a step did)."""
        margin = _slide_margin(context + lead, chunk)
        return context + self.model.pattern.max_delay + 1 + 2 * margin < columns

    def _slide_chunk(self, context: int, chunk: int, columns: int, lead: int) -> int | None:
        """The fewest columns a step, from `chunk` on, at which the window keeps sliding (None:
        not even at `MAX_SLIDE_CHUNK`)."""
        for c in range(chunk, max(chunk, MAX_SLIDE_CHUNK) + 1):
            if self._can_slide(context, c, columns, lead):
                return c
        return None

    def _lead(self) -> int:
        """Prefix positions the next window is prefilled with before its columns."""
        prefix = self._require().prefix
        return 0 if prefix is None else prefix.length

    def _columns(self, win: Window, first: int, count: int) -> torch.Tensor:
        """Input columns first..first+count-1 of `win`, delay mask applied, one copy per row."""
        st = self._require()
        return self._expand(self.model.pattern.columns(st.frames, st.base, win.origin, first, count, st.total_frames))

    def _expand(self, columns: torch.Tensor) -> torch.Tensor:
        return columns.unsqueeze(0).expand(self._require().prompts.count, -1, -1).to(self.model.device)

    def _prefill(self, prompt_frames: int) -> StepResult:
        """Start the live window at frame 0: feed BOS + the prompt frames at once, sample the next."""
        st = self._require()
        tokens = self._columns(st.window, 0, prompt_frames + 1)
        if st.prefix is not None:
            logits = self.model.lm.forward_prefixed(tokens, st.window.cache, st.prefix, all_positions=True)
        else:
            logits = self.model.lm.forward(tokens, 0, st.window.cache, self._crosses(), all_positions=True)
        codes = self._record(logits, prompt_frames + 1)
        if self.frames_done - st.decoded >= self.decode_chunk:
            self._queue_codec(self.frames_done)
        return StepResult(codes=codes, audio=self._decode_queue())

    def _prep_input(self, after_step: bool) -> tuple[torch.Tensor, Segment] | None:
        """This step's share of the preparation: what to feed and where, or None. A melody
        stream's window takes its prefix first, then its columns."""
        st = self._require()
        prep = st.prep
        if prep is None:
            return None
        win = st.window
        live = win.column + (0 if after_step else 1)  # the live column once this step is done
        steps_left = win.columns - 2 - live  # steps the live window can still take after it
        lead = _prefix_left(prep)
        if isinstance(prep, Slide):
            nxt = prep.window
            work = lead + win.origin + live - nxt.origin - nxt.column  # positions behind the live column
            total = work + max(steps_left, 0)  # it keeps moving while the slide catches up
        else:
            work = total = lead + prep.remaining
        if work <= 0:
            return None
        chunk = st.chunk if isinstance(prep, Slide) else st.continue_chunk
        count = work if steps_left <= 0 else min(work, max(chunk, -(-total // (steps_left + 1))))
        return self._prep_chunk(prep, count)

    def _prep_chunk(self, prep: Slide | Continuation, count: int) -> tuple[torch.Tensor, Segment]:
        """The next `count` positions of `prep` (at most what is left of its prefix, or its columns)."""
        prefix = prep.window.prefix if isinstance(prep, Slide) else prep.prefix
        cache = prep.window.cache if isinstance(prep, Slide) else prep.kv
        lead = _prefix_left(prep)
        if prefix is not None and lead:
            count = min(count, lead)
            states = prefix.states[:, prep.prefix_fed : prep.prefix_fed + count]
            rows = states.shape[0]
            K = self.model.spec.lm.num_codebooks
            tokens = torch.zeros(rows, K, count, dtype=torch.long, device=self.model.device)  # unread
            seg = Segment(rows, prep.prefix_fed, cache, [], columns=count, logits=False, states=states)
            return tokens, seg
        offset = 0 if prefix is None else prefix.length
        if isinstance(prep, Slide):
            first = prep.window.column
            tokens = self._columns(prep.window, first, count)
        else:
            first = prep.fed
            count = min(count, prep.remaining)
            tokens = self._expand(prep.columns[:, first : first + count])
        seg = Segment(tokens.shape[0], first, cache, self._crosses(), columns=count, logits=False, offset=offset)
        return tokens, seg

    def _account(self, prep: Slide | Continuation, seg: Segment) -> None:
        """`seg` (from `_prep_chunk`) has been fed: count it."""
        if seg.states is not None:
            prep.prefix_fed += seg.columns
        elif isinstance(prep, Slide):
            prep.window.column += seg.columns
        else:
            prep.fed += seg.columns

    def _feed_all(self, prep: Slide | Continuation) -> None:
        """Feed what is left of `prep` now (a restart, which does not wait)."""
        while _prefix_left(prep) or (isinstance(prep, Continuation) and prep.remaining):
            left = _prefix_left(prep) or (prep.remaining if isinstance(prep, Continuation) else 0)
            tokens, seg = self._prep_chunk(prep, left)
            self.model.lm.forward_segments(tokens, [seg])
            self._account(prep, seg)

    def _advance_preparation(self) -> None:
        """After a step: account for (or run) this step's preparation chunk; swap a finished
        window in; begin a slide when the live window nears its end."""
        st = self._require()
        prep = st.prep
        seg, self._planned = self._planned, None
        if prep is None:
            margin = _slide_margin(st.context_frames + self._lead(), st.chunk)
            due = st.window.column + margin >= st.window.columns
            if st.total_frames is None and (due or st.prefix is not st.window.prefix):  # or a new melody
                self._begin_slide()
            return
        if seg is None:  # stepped in a batch (or nothing was due before the step): a forward of its own
            chunk = self._prep_input(after_step=True)
            if chunk is not None:
                tokens, seg = chunk
                self.model.lm.forward_segments(tokens, [seg])
        if seg is not None:
            self._account(prep, seg)
        if isinstance(prep, Slide):
            nxt, win = prep.window, st.window
            if not _prefix_left(prep) and nxt.origin + nxt.column == win.origin + win.column:  # caught up: swap
                st.spare, st.window = win.cache, nxt
                st.prep = None
                st.slides += 1
                self._rebase(min(nxt.origin, st.decoded))
                if st.queued is not None:
                    self._activate(st.queued)
                elif st.prefix is not nxt.prefix:  # the melody changed while it was prepared
                    self._begin_slide()
        elif not _prefix_left(prep) and prep.remaining == 0:
            self._swap_in(prep)

    def _begin_slide(self) -> None:
        """Start preparing the next window - from the last `context` complete frames, under the
        stream's current prefix (a melody stream's) - in the spare cache."""
        st = self._require()
        complete = self.next_frame - self.model.pattern.max_delay
        origin = max(st.window.origin, complete - st.context_frames)
        cols = st.window.columns
        st.prep = Slide(Window(cache=self._spare(), origin=origin, column=0, columns=cols, prefix=st.prefix))

    def _activate(self, cont: Continuation, deadline: bool = True) -> None:
        """Make `cont` the preparation (replacing a slide: the continuation restarts the window).
        With a `deadline` (the stream steps on meanwhile), one that waited for a slide and still
        cannot be ready in time at a slide's pace keeps only its last frames that can
        (`Continuation.trimmed`)."""
        st = self._require()
        st.queued = None
        if deadline and not self._fits(cont.frames + self._lead()):
            fits = max(1, (self._steps_left() - 1) * st.chunk - self._lead())
            trimmed = self._continuation(cont.codes[:, -fits:])
            cont.codes, cont.columns, cont.trimmed = trimmed.codes, trimmed.columns, cont.frames
        cont.cache = self._spare()
        cont.prefix, cont.prefix_fed = st.prefix, 0
        st.prep = cont

    def _continuation(self, codes: torch.Tensor) -> Continuation:
        """A restart from `codes` (K, P): they are fed as the columns BOS, then their frames."""
        return Continuation(codes=codes, columns=self.model.pattern.interleave(codes)[:, : codes.shape[-1]])

    def _fits(self, positions: int, pace: int | None = None) -> bool:
        """Whether a continuation of `positions` (its frames, and a melody prefix) can be prefilled
        at `pace` columns a step (default: a slide's) before the live window ends."""
        return positions <= (self._steps_left() - 1) * (pace or self._require().chunk)

    def _steps_left(self) -> int:
        """Steps the live window can still take (each after its column was fed)."""
        win = self._require().window
        return win.columns - 2 - win.column

    def _spare(self) -> KVCache:
        """The cache a preparation fills (an endless stream allocates it at start, never later)."""
        spare = self._require().spare
        if spare is None:
            raise RuntimeError("a finite run has no spare cache: it neither slides nor continues")
        return spare

    def _supersede(self) -> None:
        """A new restart replaces a continuation that has not taken over yet."""
        st = self._require()
        for old in (st.queued, st.prep):
            if isinstance(old, Continuation):
                old.superseded = True
        st.queued = None
        if isinstance(st.prep, Continuation):
            st.prep = None

    def _swap_in(self, cont: Continuation) -> None:
        """The continuation's window becomes the live one: the stream goes on from its codes."""
        st = self._require()
        start = self.frames_done
        self._queue_codec(start)  # frames before `start` are the old material's: hand them over first
        origin = start - cont.frames
        self._rebase(origin)
        st.frames[:, start - st.base :] = self.model.spec.lm.special_token
        st.frames[:, origin - st.base : start - st.base] = cont.codes
        st.protected = start
        if cont.cache is not st.window.cache:
            st.spare = st.window.cache
        cols = st.window.columns
        st.window = Window(cache=cont.kv, origin=origin, column=cont.frames, columns=cols, prefix=cont.prefix)
        st.prep = None
        cont.frame = start

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

    def _rearrange(self, order: list[int] | None) -> None:
        """Cache row r <- old row order[r], in the live window and in a window being prepared
        (None: the rows stay as they are)."""
        if order is None:
            return
        st = self._require()
        st.window.cache.rearrange_rows(order, st.window.column + 1)
        if isinstance(st.prep, Slide):
            st.prep.window.cache.rearrange_rows(order, st.prep.window.column)
        elif isinstance(st.prep, Continuation) and st.prep.cache is not None:
            st.prep.cache.rearrange_rows(order, st.prep.fed)

    # -- internals: sampling and decoding ------------------------------------------------------
    def _record(self, logits: torch.Tensor, column: int) -> torch.Tensor:
        """Sample window column `column` from logits (rows, K, V) and record it; returns the codes
        (K, 0 or 1) of the frame it completed."""
        st = self._require()
        pat = self.model.pattern
        tokens = sample(st.prompts.mix(logits, self.params), self.params, st.generator).tolist()
        win = st.window
        held = st.frames.numpy()  # a view: element writes through numpy cost ~0.1 us, through torch ~5
        for k, d in enumerate(pat.delays):
            f = win.origin + column - 1 - d
            if f >= max(st.protected, win.origin) and (st.total_frames is None or f < st.total_frames):
                held[k, f - st.base] = tokens[k]
        win.column = column
        done = win.origin + column - 1 - pat.max_delay
        if done >= st.protected and (st.total_frames is None or done < st.total_frames):
            return st.frames[:, done - st.base : done - st.base + 1].clone()
        return st.frames[:, :0]

    def _queue_codec(self, end: int) -> None:
        """Hand the complete frames not yet handed over, up to `end`, to the codec queue."""
        st = self._require()
        if end <= st.decoded:
            return
        codes = st.frames[:, st.decoded - st.base : end - st.base].clone()
        st.decoded = end
        st.codec_queue = codes if st.codec_queue is None else torch.cat([st.codec_queue, codes], dim=-1)

    def take_codec_input(self) -> torch.Tensor | None:
        """Codes (channels, K / channels, n) queued for the codec (by a deferred step), or None."""
        st = self._require()
        codes, st.codec_queue = st.codec_queue, None
        return None if codes is None else self.model.codes_to_codec(codes.to(self.model.device))

    def decoded(self, out: torch.Tensor) -> torch.Tensor:
        """The codec's output (channels, 1, n) for `take_codec_input`'s codes -> this stream's audio."""
        return self._trim(out.squeeze(1))

    def _decode_queue(self) -> torch.Tensor:
        codes = self.take_codec_input()
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


def _prefix_left(prep: Slide | Continuation) -> int:
    """Positions of a preparation's prefix (a melody stream's) still to be fed."""
    prefix = prep.window.prefix if isinstance(prep, Slide) else prep.prefix
    return 0 if prefix is None else prefix.length - prep.prefix_fed


def _slide_margin(context: int, chunk: int) -> int:
    """Columns before the end of a window at which a slide must begin to finish in time at
    `chunk` columns a step (it gains chunk - 1 columns a step on the live window)."""
    backlog = context + 8
    return -(-backlog // (max(MIN_CHUNK, chunk) - 1)) + 4
