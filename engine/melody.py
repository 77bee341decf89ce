"""Melody conditioning (MusicGen-Melody): audio -> one-hot chroma -> the decoder's prefix.

A melody checkpoint is conditioned on the *chroma* of a piece of audio - which of the 12 pitch
classes is strongest in each STFT frame - and on text. Both are projected to the decoder's width
and put in front of the codes as a prefix of the sequence (no cross-attention): chroma frames
first (repeated or cut to the checkpoint's `chroma_length`), then the text states.

`ChromaExtractor` computes the features exactly as transformers' `MusicgenMelodyFeatureExtractor`
does: a power spectrogram (n_fft 16384, hop 4096 at 32 kHz by default, Hann window, centred with
reflection, divided by the window's L2 norm), transformers' port of librosa's chroma filter bank,
max-normalised per frame, argmax one-hot. The reference takes its spectrogram from torchaudio's
`Spectrogram`, which is this `torch.stft` call and nothing more; torchaudio itself is not a
dependency (its wheels stop at torch 2.11 and pin that torch).

`prefix_states` builds the prefix as transformers' `generate` does, including its unconditional
row (text zeros, chroma "bin 0") and, with no text, one text position of zeros: the reference then
feeds T5 its start token, which is also its pad token, so it masks the result out.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import torch

from .conditioning import TextConditioner
from .errors import AudioInputError, ContextError
from .lm import LanguageModel
from .pieces import run


@dataclass(frozen=True)
class ChromaSettings:
    """The feature extractor's settings (a checkpoint's preprocessor_config.json, else the defaults
    every published melody checkpoint uses)."""

    sample_rate: int = 32000
    n_fft: int = 16384
    hop: int = 4096  # samples per chroma frame
    num_chroma: int = 12
    max_seconds: float = 30.0  # longer audio is cut to its first 30 s, as the reference does

    @classmethod
    def from_directory(cls, path: Path) -> ChromaSettings:
        file = path / "preprocessor_config.json"
        if not file.is_file():
            return cls()
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError):
            return cls()
        return cls(
            sample_rate=int(raw.get("sampling_rate", cls.sample_rate)),
            n_fft=int(raw.get("n_fft", cls.n_fft)),
            hop=int(raw.get("hop_length", cls.hop)),
            num_chroma=int(raw.get("num_chroma", cls.num_chroma)),
            max_seconds=float(raw.get("chunk_length", cls.max_seconds)),
        )


class ChromaExtractor:
    def __init__(self, settings: ChromaSettings | None = None) -> None:
        from transformers.audio_utils import chroma_filter_bank

        self.settings = s = settings or ChromaSettings()
        bank = chroma_filter_bank(
            sampling_rate=s.sample_rate, num_frequency_bins=s.n_fft, tuning=0, num_chroma=s.num_chroma
        )
        self.filters = torch.from_numpy(bank).float()
        self.window = torch.hann_window(s.n_fft)

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """(1, samples) -> power spectrogram (1, n_fft // 2 + 1, frames), as torchaudio's
        `Spectrogram(n_fft, hop_length=hop, power=2, normalized=True)` computes it."""
        s = self.settings
        spec = torch.stft(
            wav,
            n_fft=s.n_fft,
            hop_length=s.hop,
            win_length=s.n_fft,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec /= self.window.pow(2.0).sum().sqrt()
        return spec.abs().pow(2.0)

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (samples,) or (channels, samples) at `settings.sample_rate` -> one-hot chroma
        (frames, num_chroma) float32, one frame per `hop` samples (channels are averaged)."""
        s = self.settings
        wav = audio.float()
        if wav.dim() == 2:
            wav = wav.mean(dim=0)
        if wav.dim() != 1 or wav.shape[0] == 0:
            raise AudioInputError("melody audio must be a non-empty (samples,) or (channels, samples) signal")
        wav = wav[: int(s.max_seconds * s.sample_rate)][None]
        if wav.shape[-1] < s.n_fft:  # centre it in one FFT window, as the reference pads
            pad = s.n_fft - wav.shape[-1]
            wav = torch.nn.functional.pad(wav, (pad // 2, pad // 2 + pad % 2), "constant", 0)
        spec = self.spectrogram(wav)  # (1, bins, frames)
        raw = torch.einsum("cf,...ft->...ct", self.filters, spec)
        norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)
        onehot = torch.zeros_like(norm)
        onehot.scatter_(dim=-1, index=norm.argmax(-1, keepdim=True), value=1)
        return onehot[0]


def prefix_states(
    lm: LanguageModel,
    text: TextConditioner,
    prompt: str | None,
    chroma: torch.Tensor | None,
    guided: bool,
) -> torch.Tensor:
    """The prefix (rows, chroma_length + S, D) for `prompt` and/or one-hot `chroma` (frames, bins):
    the conditional row, then (when `guided`) the unconditional one, as transformers builds them."""
    return run(prefix_states_steps(lm, text, prompt, chroma, guided))


def prefix_states_steps(
    lm: LanguageModel,
    text: TextConditioner,
    prompt: str | None,
    chroma: torch.Tensor | None,
    guided: bool,
) -> Generator[None, None, torch.Tensor]:
    """`prefix_states`, yielding after every T5 block (a live stream runs it a piece per step)."""
    spec = lm.spec
    if not spec.prefix_conditioned:
        raise ContextError("this checkpoint has no melody conditioning (load a MusicGen-Melody checkpoint)")
    if chroma is not None and (chroma.dim() != 2 or chroma.shape[1] != spec.num_chroma or chroma.shape[0] == 0):
        raise ContextError(f"melody features must be (frames, {spec.num_chroma}) one-hot chroma")
    if prompt is None:  # the masked-out start token: one position of zeros
        projected = torch.zeros(1, 1, spec.hidden, device=lm.device, dtype=lm.dtype)
    else:
        states, mask = yield from text.encode_steps(prompt)
        projected = lm.project_condition(states, mask)  # the conditional row alone, as the reference projects it
    null_chroma = torch.zeros(1, 1 if chroma is None else chroma.shape[0], spec.num_chroma)
    null_chroma[:, :, 0] = 1
    audio = null_chroma if chroma is None else chroma[None].float()
    if guided:
        projected = torch.cat([projected, torch.zeros_like(projected)], dim=0)
        audio = torch.cat([audio, null_chroma], dim=0)
    return lm.project_prefix(audio, projected, spec.chroma_length)
