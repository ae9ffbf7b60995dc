"""The forecasters' series: weekly Mauna Loa CO2 as statsmodels ships it, its chronological
split, sliding windows, the two baselines and the rolling-origin errors.

Missing weeks (59 of 2,284, none at either end) are filled by linear interpolation in time
between the nearest measured weeks, before anything else; the card says how many.
The split is chronological (70 % train / 15 % validation / 15 % test by position), never
shuffled: a training window's targets end before the validation part starts, and every test
origin's window may look back into earlier parts, but its targets lie inside the test part.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from modelrepo import ForecastErrors, StepErrors
from training.errors import DatasetUnavailable

SEASON = 52  # weeks per year: the seasonal period of the baselines and of MASE


@dataclass(frozen=True)
class Series:
    name: str
    source: str
    units: str
    step: str
    values: np.ndarray  # float64, missing values already filled
    missing: int
    first: str  # dates of the first and last values
    last: str
    train_end: int  # values[:train_end] train, [train_end:val_end] validation, rest test
    val_end: int

    def fingerprint(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.values).tobytes()).hexdigest()

    @property
    def split(self) -> str:
        n = len(self.values)
        return (
            f"chronological: train {self.train_end} weeks, validation "
            f"{self.val_end - self.train_end}, test {n - self.val_end} (of {n}; "
            f"{self.missing} missing weeks filled by linear interpolation in time)"
        )


def load_co2() -> Series:
    """statsmodels' weekly Mauna Loa CO2 (1958-03-29 to 2001-12-29), split 70/15/15."""
    try:
        from statsmodels.datasets import co2
    except ImportError as exc:
        raise DatasetUnavailable(
            "statsmodels is not installed (pip install -e '.[train]')"
        ) from exc
    frame = co2.load_pandas().data["co2"]
    missing = int(frame.isna().sum())
    filled = frame.interpolate(method="time")
    values = filled.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise DatasetUnavailable("co2: missing values at an end of the series cannot be filled")
    n = len(values)
    return Series(
        name="mauna-loa-co2-weekly",
        source="statsmodels.datasets.co2",
        units="ppm",
        step="1 week",
        values=values,
        missing=missing,
        first=str(frame.index[0].date()),
        last=str(frame.index[-1].date()),
        train_end=int(n * 0.70),
        val_end=int(n * 0.85),
    )


def windows(
    values: np.ndarray, origins: np.ndarray, window: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each origin t: the input ``values[t-window:t]`` and target ``values[t:t+horizon]``
    (float32)."""
    x = np.stack([values[t - window : t] for t in origins]).astype(np.float32)
    y = np.stack([values[t : t + horizon] for t in origins]).astype(np.float32)
    return x, y


def origins(start: int, end: int, window: int, horizon: int) -> np.ndarray:
    """Every origin whose targets lie in ``[start, end)`` and whose window has data."""
    return np.arange(max(start, window), end - horizon + 1)


def seasonal_naive(values: np.ndarray, at: np.ndarray, horizon: int) -> np.ndarray:
    """The value one season before each target: ``values[t + h - SEASON]``."""
    steps = np.arange(horizon)
    return values[at[:, None] + steps[None, :] - SEASON]


def mase_scale(values: np.ndarray, end: int) -> float:
    """In-sample MAE of the seasonal naive forecast over ``values[:end]``."""
    return float(np.abs(values[SEASON:end] - values[: end - SEASON]).mean())


def holt_winters(values: np.ndarray, fit_end: int, at: np.ndarray, horizon: int) -> np.ndarray:
    """Additive Holt-Winters (trend + yearly season) fitted once on ``values[:fit_end]``,
    then run forward with those parameters: each origin's forecast uses only the values
    before it (rolling origin, no refit)."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    def model(y: np.ndarray, **initial: object) -> ExponentialSmoothing:
        return ExponentialSmoothing(
            y, trend="add", seasonal="add", seasonal_periods=SEASON, **initial
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from the optimizer
        fitted = model(values[:fit_end], initialization_method="estimated").fit()
        p = fitted.params
        known = model(
            values,
            initialization_method="known",
            initial_level=p["initial_level"],
            initial_trend=p["initial_trend"],
            initial_seasonal=p["initial_seasons"],
        ).fit(
            smoothing_level=p["smoothing_level"],
            smoothing_trend=p["smoothing_trend"],
            smoothing_seasonal=p["smoothing_seasonal"],
            optimized=False,
        )
    level, trend, season = (np.asarray(a) for a in (known.level, known.trend, known.season))
    steps = np.arange(1, horizon + 1)
    last = at - 1  # the states after the last value before each origin
    forecast: np.ndarray = (
        level[last, None]
        + steps[None, :] * trend[last, None]
        + season[last[:, None] + steps[None, :] - SEASON]
    )
    return forecast


def errors(
    method: str, description: str, forecast: np.ndarray, actual: np.ndarray, scale: float
) -> ForecastErrors:
    """MAE, RMSE and MASE over every step and per horizon step."""
    diff = forecast.astype(np.float64) - actual.astype(np.float64)
    mae, rmse = np.abs(diff).mean(axis=0), np.sqrt((diff**2).mean(axis=0))
    return ForecastErrors(
        method=method,
        description=description,
        mae=float(np.abs(diff).mean()),
        rmse=float(np.sqrt((diff**2).mean())),
        mase=float(np.abs(diff).mean() / scale),
        per_step=[
            StepErrors(
                step=h + 1, mae=float(mae[h]), rmse=float(rmse[h]), mase=float(mae[h] / scale)
            )
            for h in range(diff.shape[1])
        ],
    )
