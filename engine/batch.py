"""Several independent streams stepped in one forward.

On CPU a step costs what it reads: every weight matrix once, whatever the number of rows. Stepping
N streams together therefore costs little more than one (BENCHMARKS.md, "Several streams"). Each
stream stays a `StreamGenerator` with its own prompt rows, guidance, sampling settings, seed, window,
slides and codec; only its matmuls are shared. Streams join and leave simply by being in the list
passed to `step` or not.

The codec batches too: the frames the streams complete in a step go through the streaming decoder
together (`Codec.push_many`), one read of its weights for all of them.

Why the batch has a fixed row count: a matmul's last bits depend on how many rows it has (MKL
picks kernels by shape) but not on which row is which. Padding every forward to `rows` therefore
gives a stream bit-identical results whoever else is in the batch - alone included - and greedy
codes cannot drift when another performer joins. (int8 rows are batch-independent anyway, see
`engine.linear`.) Prefills (start, restart, window slides) run per stream outside the batch. The
decoded audio depends on the companions only in its last float bits (the codec's GEMMs change
shape with the number of streams decoded together); the codes do not at all.
"""

from __future__ import annotations

import torch

from .errors import ContextError
from .generator import StepResult, StreamGenerator
from .lm import Segment
from .model import MusicGen


class Batch:
    def __init__(self, model: MusicGen, rows: int) -> None:
        """`rows`: LM rows per forward, the sum over the streams stepped together of their rows
        (one per prompt sounding plus one unconditional row when guided)."""
        if rows < 1:
            raise ContextError(f"a batch needs at least one row, got {rows}")
        self.model = model
        self.rows = rows
        K = model.spec.lm.num_codebooks
        self._tokens = torch.full((rows, K, 1), model.spec.lm.special_token, dtype=torch.long, device=model.device)

    @torch.no_grad()
    def step(self, streams: list[StreamGenerator]) -> list[StepResult]:
        """One step of every stream in `streams`; results in the same order.

        Streams are packed into forwards of `rows` rows in order; when they need more rows than one
        forward has (a crossfade adds a row for its duration), the rest go into another forward of
        the same size - slower for those steps, the same results."""
        inputs = [g.step_input() for g in streams]
        for _, seg in inputs:
            if seg.rows > self.rows:
                raise ContextError(f"a stream needs {seg.rows} rows; the batch has {self.rows}")
        logits: list[torch.Tensor] = []
        group: list[tuple[torch.Tensor, Segment]] = []
        used = 0
        for item in inputs:
            if group and used + item[1].rows > self.rows:
                logits.extend(self._forward(group))
                group, used = [], 0
            group.append(item)
            used += item[1].rows
        if group:
            logits.extend(self._forward(group))
        results = [g.step_output(lg, defer_decode=True) for g, lg in zip(streams, logits)]
        due = [(g, r, c) for g, r in zip(streams, results) if (c := g.take_codec_input()) is not None]
        if due:
            audio = self.model.codec.push_many([g.decoder for g, _, _ in due], [c for _, _, c in due])
            for (g, r, _), out in zip(due, audio):
                r.audio = g.decoded(out)
        return results

    def _forward(self, group: list[tuple[torch.Tensor, Segment]]) -> list[torch.Tensor]:
        tokens = self._tokens
        tokens.fill_(self.model.spec.lm.special_token)  # padding rows: any valid token will do
        r = 0
        for cols, seg in group:
            tokens[r : r + seg.rows] = cols
            r += seg.rows
        logits = self.model.lm.forward_segments(tokens, [seg for _, seg in group], batched=True)
        out, r = [], 0
        for _, seg in group:
            out.append(logits[r : r + seg.rows])
            r += seg.rows
        return out
