"""Sound synthesis building blocks for the demo datasets: noise beds, tones, sweeps, transients, rooms, devices.

Everything is plain numpy driven by a ``numpy.random.Generator``, so a seed reproduces every sample.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "DeviceResponse",
    "add_at",
    "babble",
    "band_noise",
    "chirps",
    "colored_noise",
    "decaying_burst",
    "harmonic_tone",
    "random_envelope",
    "reverberate",
    "rms",
    "sweep",
    "transients",
]

OCTAVE_DB = 20 * np.log10(2.0)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x), dtype=np.float64)) + 1e-12)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / rms(x)).astype(np.float32)


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, gain_of_freq) -> np.ndarray:
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    return _normalise(np.fft.irfft(spectrum * gain_of_freq(np.maximum(freqs, 1.0)), n))


def colored_noise(rng: np.random.Generator, n: int, sr: int, slope_db_per_octave: float,
                  lowpass_hz: float | None = None) -> np.ndarray:
    """Unit-RMS noise whose spectrum falls by ``slope`` dB per octave (0: white, -3: pink, -6: brown)."""
    def gain(f):
        g = f ** (slope_db_per_octave / OCTAVE_DB)
        return g if lowpass_hz is None else g / np.sqrt(1 + (f / lowpass_hz) ** 4)
    return _shaped_noise(rng, n, sr, gain)


def band_noise(rng: np.random.Generator, n: int, sr: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Unit-RMS noise band-limited to ``[low_hz, high_hz]`` with soft (2nd-order-like) edges."""
    return _shaped_noise(rng, n, sr, lambda f: 1 / np.sqrt((1 + (low_hz / f) ** 4) * (1 + (f / high_hz) ** 4)))


def random_envelope(rng: np.random.Generator, n: int, sr: int, rate_hz: float, depth: float) -> np.ndarray:
    """A smooth random gain in ``[1 - depth, 1]`` changing about ``rate_hz`` times per second."""
    knots = max(2, int(np.ceil(n / sr * rate_hz)) + 2)
    values = 1 - depth * rng.random(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values).astype(np.float32)


def harmonic_tone(rng: np.random.Generator, n: int, sr: int, f0: float, harmonics: int, rolloff_db: float = 6.0,
                  drift: float = 0.01) -> np.ndarray:
    """Unit-RMS harmonic series (engine, hum, motor whine) with a slowly drifting fundamental."""
    f_inst = f0 * (1 + drift * (2 * random_envelope(rng, n, sr, 2.0, 1.0) - 1))
    phase = 2 * np.pi * np.cumsum(f_inst) / sr
    out = np.zeros(n, dtype=np.float64)
    for k in range(1, harmonics + 1):
        if k * f0 < sr / 2 - 500:
            out += 10 ** (-rolloff_db * (k - 1) / 20) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return _normalise(out)


def sweep(n: int, sr: int, f_start: float, f_end: float, fade: float = 0.1) -> np.ndarray:
    """A tone gliding exponentially from ``f_start`` to ``f_end`` with raised-cosine fades (peak 1)."""
    t = np.arange(n) / sr
    duration = max(n / sr, 1e-6)
    f_inst = f_start * (f_end / f_start) ** (t / duration)
    x = np.sin(2 * np.pi * np.cumsum(f_inst) / sr)
    return (x * _fades(n, int(fade * n))).astype(np.float32)


def _fades(n: int, ramp: int) -> np.ndarray:
    w = np.ones(n)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        w[:ramp], w[n - ramp:] = r, r[::-1]
    return w


def decaying_burst(rng: np.random.Generator, n: int, sr: int, low_hz: float, high_hz: float,
                   decay_s: float) -> np.ndarray:
    """A band-limited noise burst with an instant attack and exponential decay (knock, step, drop)."""
    env = np.exp(-np.arange(n) / (decay_s * sr))
    return (band_noise(rng, n, sr, low_hz, high_hz) * env).astype(np.float32)


def add_at(dst: np.ndarray, src: np.ndarray, start: int) -> None:
    """Adds ``src`` into ``dst`` from sample ``start``, cutting what falls outside."""
    lo, hi = max(start, 0), min(start + len(src), len(dst))
    if hi > lo:
        dst[lo:hi] += src[lo - start:hi - start]


def transients(rng: np.random.Generator, n: int, sr: int, rate_hz: float, low_hz: float, high_hz: float,
               decay_s: float) -> np.ndarray:
    """Unit-RMS Poisson train of decaying bursts (footsteps, rattles, rain drops)."""
    out = np.zeros(n, dtype=np.float32)
    length = int(decay_s * sr * 5)
    for start in np.flatnonzero(rng.random(n) < rate_hz / sr):
        add_at(out, decaying_burst(rng, length, sr, low_hz, high_hz, decay_s) * rng.uniform(0.3, 1.0), start)
    if not out.any():  # no event fell in the clip: one at a random place
        add_at(out, decaying_burst(rng, length, sr, low_hz, high_hz, decay_s), int(rng.integers(n)))
    return _normalise(out)


def chirps(rng: np.random.Generator, n: int, sr: int, rate_hz: float, low_hz: float, high_hz: float) -> np.ndarray:
    """Unit-RMS bird-like short sweeps at random times and frequencies."""
    out = np.zeros(n, dtype=np.float32)
    count = max(1, rng.poisson(rate_hz * n / sr))
    for _ in range(count):
        length = int(rng.uniform(0.04, 0.15) * sr)
        f1, f2 = rng.uniform(low_hz, high_hz, size=2)
        add_at(out, sweep(length, sr, f1, f2, fade=0.3) * rng.uniform(0.3, 1.0), int(rng.integers(n)))
    return _normalise(out)


def babble(rng: np.random.Generator, n: int, sr: int, syllable_hz: float, talkers: int) -> np.ndarray:
    """Unit-RMS speech-like babble: formant-band noises gated at a syllabic rate, summed over talkers."""
    out = np.zeros(n, dtype=np.float32)
    for _ in range(talkers):
        centre = rng.uniform(400, 1800)
        voice = band_noise(rng, n, sr, centre / 1.6, centre * 1.6)
        out += voice * random_envelope(rng, n, sr, syllable_hz * rng.uniform(0.8, 1.25), 0.95) ** 2
    return _normalise(out)


def full_convolution(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``scipy.signal.fftconvolve(x, h, mode="full")``, with scipy.signal imported on first use: it costs about a
    second at import, which every process importing :mod:`kd.data` (each ``kd teach`` worker) would pay."""
    from scipy.signal import fftconvolve

    return fftconvolve(x, h, mode="full")


def reverberate(rng: np.random.Generator, x: np.ndarray, sr: int, rt60_s: float, wet: float) -> np.ndarray:
    """Adds a room: convolution with exponentially decaying noise (reverberation time ``rt60_s``)."""
    n = int(rt60_s * sr)
    ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
    tail = full_convolution(x, ir / np.sqrt(np.sum(ir**2)))[: len(x)]
    return ((1 - wet) * x + wet * tail).astype(np.float32)


class DeviceResponse:
    """A simulated recording device: EQ curve, microphone-port echoes, compression and self-noise.

    The EQ is a smooth magnitude curve in dB (high-pass, low-pass and a few peaks/dips at random log
    frequencies), realised as a 1023-tap linear-phase FIR; a few short echoes colour the response like a phone's
    mic port; simulated devices compress the dynamics like TAU's S devices. ``strength`` scales how far the device
    departs from flat: device ``a`` (the reference binaural mic) is close to 0.
    """

    def __init__(self, rng: np.random.Generator, sr: int, strength: float, compress: bool) -> None:
        self.sr, self.strength, self.compress = sr, strength, compress
        self.highpass_hz = 20 + strength * rng.uniform(100, 500)
        self.lowpass_hz = sr / 2 * (1 - strength * rng.uniform(0.3, 0.75))
        self.peaks = [(np.exp(rng.uniform(np.log(200), np.log(8000))), strength * rng.uniform(-9, 9),
                       rng.uniform(0.2, 1.0)) for _ in range(rng.integers(2, 6))]
        self.echoes = [(int(rng.uniform(0.0002, 0.002) * sr), strength * rng.uniform(-0.35, 0.35))
                       for _ in range(rng.integers(1, 4))]
        self.threshold_db = rng.uniform(-30, -18)
        self.ratio = rng.uniform(2, 5)
        self.noise_db = -65 + strength * rng.uniform(10, 30)
        self.ir = self._impulse_response()

    def gain_db(self, freqs: np.ndarray) -> np.ndarray:
        f = np.maximum(freqs, 1.0)
        db = -10 * np.log10(1 + (self.highpass_hz / f) ** 4) - 10 * np.log10(1 + (f / self.lowpass_hz) ** 8)
        for centre, gain, width_oct in self.peaks:
            db += gain * np.exp(-0.5 * (np.log2(f / centre) / width_oct) ** 2)
        return db

    def _impulse_response(self, taps: int = 1023) -> np.ndarray:
        freqs = np.fft.rfftfreq(taps + 1, 1 / self.sr)
        fir = np.fft.irfft(10 ** (self.gain_db(freqs) / 20), taps + 1)
        fir = np.roll(fir, taps // 2)[:taps] * np.hanning(taps)
        port = np.zeros(max(d for d, _ in self.echoes) + 1)
        port[0] = 1.0
        for delay, gain in self.echoes:
            port[delay] += gain
        return np.convolve(fir, port)

    def _compressor(self, x: np.ndarray) -> np.ndarray:
        window = max(1, int(0.01 * self.sr))
        power = np.convolve(x**2, np.ones(window) / window, mode="same")
        level_db = 10 * np.log10(power + 1e-10)
        over = np.maximum(level_db - self.threshold_db, 0)
        return x * 10 ** (-over * (1 - 1 / self.ratio) / 20)

    def __call__(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        delay = len(self.ir) // 2
        y = full_convolution(x, self.ir)[delay:delay + len(x)]
        if self.compress:
            y = self._compressor(y)
        y = y + rng.standard_normal(len(y)) * rms(y) * 10 ** (self.noise_db / 20)
        return y.astype(np.float32)
