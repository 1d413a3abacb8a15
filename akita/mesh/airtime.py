"""LoRa time on air, from Semtech's formula (SX1276/77/78/79 datasheet, section 4.1.1.7).

    T_sym      = 2^SF / BW
    T_preamble = (n_preamble + 4.25) · T_sym
    n_payload  = 8 + max(ceil((8·PL − 4·SF + 28 + 16·CRC − 20·IH) / (4·(SF − 2·DE))) · (CR + 4), 0)
    T_air      = T_preamble + n_payload · T_sym

PL is the payload in bytes, IH = 1 for implicit header mode (0: explicit, as RNodes send),
CRC = 1 when the payload CRC is on, DE = 1 when low data rate optimisation is on (the
radio turns it on when a symbol lasts 16 ms or more: SF11 and SF12 at 125 kHz), and CR is
1–4 for coding rates 4/5–4/8. The nominal bit rate is SF · BW / 2^SF · 4 / (4 + CR).

Pure arithmetic: the radio channel emulator charges each frame with it, and the gateway
estimates its own airtime with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SPREADING_FACTORS = range(5, 13)
# Sub-GHz LoRa (SX127x/SX126x), then 2.4 GHz LoRa (SX128x).
BANDWIDTHS_HZ = (7_800, 10_400, 15_600, 20_800, 31_250, 41_700, 62_500, 125_000, 250_000,
                 500_000, 203_125, 406_250, 812_500, 1_625_000)
CODING_RATES = range(5, 9)  # the denominator of 4/5 … 4/8
LOW_DATA_RATE_SYMBOL_S = 0.016


@dataclass(frozen=True)
class LoraProfile:
    """One LoRa modulation: spreading factor, bandwidth (Hz), coding rate 4/`coding_rate`."""

    spreading_factor: int = 9
    bandwidth_hz: int = 125_000
    coding_rate: int = 5
    preamble_symbols: int = 8
    explicit_header: bool = True
    crc: bool = True

    def __post_init__(self) -> None:
        if self.spreading_factor not in SPREADING_FACTORS:
            raise ValueError(f"spreading factor {self.spreading_factor}: expected 5 to 12")
        if self.bandwidth_hz not in BANDWIDTHS_HZ:
            raise ValueError(f"bandwidth {self.bandwidth_hz} Hz: expected one of "
                             + ", ".join(str(bw) for bw in BANDWIDTHS_HZ))
        if self.coding_rate not in CODING_RATES:
            raise ValueError(f"coding rate 4/{self.coding_rate}: expected 4/5 to 4/8")
        if not 6 <= self.preamble_symbols <= 65_535:
            raise ValueError(f"preamble of {self.preamble_symbols} symbols: expected 6 to 65535")

    @property
    def symbol_s(self) -> float:
        return float(2 ** self.spreading_factor) / self.bandwidth_hz

    @property
    def low_data_rate(self) -> bool:
        return self.symbol_s >= LOW_DATA_RATE_SYMBOL_S

    @property
    def bitrate(self) -> float:
        """Nominal bits per second of payload, as Reticulum and RNodes state it."""
        sf = self.spreading_factor
        return sf * self.bandwidth_hz / 2 ** sf * 4 / self.coding_rate

    def payload_symbols(self, payload_bytes: int) -> int:
        if payload_bytes < 0:
            raise ValueError("payload size below 0")
        sf = self.spreading_factor
        de = 1 if self.low_data_rate else 0
        ih = 0 if self.explicit_header else 1
        crc = 1 if self.crc else 0
        numerator = 8 * payload_bytes - 4 * sf + 28 + 16 * crc - 20 * ih
        blocks = math.ceil(numerator / (4 * (sf - 2 * de)))
        return 8 + max(blocks * self.coding_rate, 0)

    def time_on_air_s(self, payload_bytes: int) -> float:
        """Seconds one frame of `payload_bytes` occupies the channel."""
        preamble = (self.preamble_symbols + 4.25) * self.symbol_s
        return preamble + self.payload_symbols(payload_bytes) * self.symbol_s


PROFILES = {
    "SF7": LoraProfile(7, 125_000),
    "SF7-500": LoraProfile(7, 500_000),
    "SF8": LoraProfile(8, 125_000),
    "SF9": LoraProfile(9, 125_000),
    "SF10": LoraProfile(10, 125_000),
    "SF11": LoraProfile(11, 125_000),
    "SF12": LoraProfile(12, 125_000),
}


def profile(name: str) -> LoraProfile:
    """A named profile (SF7 … SF12 at 125 kHz, SF7-500 at 500 kHz; all CR 4/5)."""
    try:
        return PROFILES[name.upper()]
    except KeyError:
        raise ValueError(f"LoRa profile {name!r}: expected one of {', '.join(PROFILES)}") from None


def standard() -> list[LoraProfile]:
    """Common modulations (SF7–SF12 at 125, 250 and 500 kHz, CR 4/5), for telling from a
    bitrate alone which LoRa modulation an interface (e.g. a pipe to a radio) runs."""
    return [LoraProfile(sf, bw) for bw in (125_000, 250_000, 500_000) for sf in range(7, 13)]
