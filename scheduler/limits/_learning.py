"""What the limiter learns from the server, as pure state of a few numbers (``now`` passed in).

Both limiters use these objects; every field is a plain float, so the Redis limiter can keep
them in its hash (one field each) and update them in its scripts the same way.

**The charge** (:class:`ChargeLearner`): the ratio between what the server charges against its
token limit and what we estimate, per limit group, learnt from three signals (and per cost
component where they allow it: see *Per component* below):

- ``x-ratelimit-remaining-tokens`` read against what we admitted since the previous reading.
  Between two readings the server consumed ``used_b - used_a + rate * (t_b - t_a)`` (its meter
  rose by what arrived and drained at ``rate``), and we admitted ``E_b - E_a`` estimated tokens.
  Only pairs where the meter cannot have run empty in between count: an empty meter stops
  draining, and counting its drain would overstate the server's charge. The test is the mean of
  the anchor's reading and the larger of the new reading and what the anchor plus our admissions
  (at the learnt charge) predict, against the drain between them. Judging by the new reading
  alone chooses pairs by the charges they hold: with a mixed price list (a flat image price
  beside text) a pair of dear requests shows a full meter and is kept while a pair of cheap ones
  shows an emptying meter and is dropped, so the learnt charge rose, admission slowed, the meter
  emptied more (flat 843 on small images: 1.93x learnt for 1.86x charged, 95.8% of the limit).
  The ratio is taken over exponentially forgotten *sums* of both (time
  constant ``memory`` seconds), not per pair: consecutive deltas telescope, so a reading that is
  off (stale, lagging by a random 0-2 s) moves the sum once and the next reading takes it back;
  the noise of the estimate is that of its two ends over the whole span. A reading of an idle
  meter (nothing used: it may have been empty, so it did not drain), a 429 (the refused tokens
  were perhaps not charged) or a new limit breaks the chain; the next reading starts a new one.
- one request alone on an empty meter (sparse traffic, where the meter empties between
  answers and no pair counts): its charge is what the meter holds at its answer plus the drain
  since its admission, added as one pair;
- a 429's ``Requested N``: the server's exact charge for one request whose estimate we know,
  added to the sums as one pair.

Lagging headers make single pairs noisy; since the sums' error is about one pair's residual,
the ratio is trusted in proportion to how far the summed estimates outweigh the mean residual
(``noise``, an EWMA): ``factor = 1 + trust * (ratio - 1)``, ``trust = min(1, estimated /
(CONFIDENCE * noise))``. The first pair fits its own ratio exactly, so the noise starts at
``FIRST_NOISE`` (a quarter) of its charge, and for a pair of readings at least ``FIRST_LAG``
(a quarter second) of the limit's drain, what a reading dated a little off moves it by (a
0.1 s stale reading made 280 tokens read as 32 and took the factor to 0.83 at once):
consistent answers (a flat price, exact ``Requested N``) are trusted within a handful of
answers; a noisy server needs about ``CONFIDENCE`` pairs' worth of traffic first. A ratio within
``DEADBAND`` (8%) of 1 keeps the formula: that is the bias lagging headers were measured to give.

The factor admission uses follows the sums' ratio, clamped to ``[MIN_FACTOR, MAX_FACTOR]`` and
moving at most ``MAX_STEP`` (20%) per answer: one odd answer moves it by at most 20% (and the
telescoping sum takes it back), while a 3x mismatch is learnt in seven answers. Readings are
dated by when they are observed: the simulator (like a service computing its headers at answer
time) describes the meter as of the answer; headers describing the admission instead only add
noise at both ends, which the span dilutes.

*Per component.* One factor misprices requests whose image shares differ (a flat 843 per
255-token image beside text charged as estimated is 1.46x-2.4x per request: near the cap the
in-flight error outgrew the margin, 3.8 429s per 1,000). Each pair and each ``Requested N`` row
also carries its image estimate ``i`` (of its estimate ``e``), and the sums keep ``i``, ``i*i/e``
and ``i*c/e`` beside ``c`` and ``e``: the normal equations of a least squares of the charge per
estimated token on the image share, weighted by ``e`` (so they telescope like the one factor's
sums, whose ratio is the fit's mean). Its two ratios, the image tokens' and the rest's (text and
completion reserve), are used when the shares spread (``MIN_SHARE_SPREAD``), both lie in the
clamps and one factor would misprice the requests by more than ``SPLIT_GAIN``; otherwise both
follow the one factor's ratio (text only, one request shape, all images: exactly the one-factor
rule). Each is trusted, deadbanded, clamped and stepped as the one factor is; a component kept
at the formula by the deadband has the other refitted given it. ``factor`` is the two blended by
the recent image share: the overall learnt ratio.

**The enforcement window** (:class:`WindowLearner`): how many seconds of the per-minute limit
the server lets through at once. It starts at ``burst_seconds``. The server's meter is proof:
a reading showing it holding more than our largest request (a request above the server's slice
is let in only alone, on an empty meter) shows the server accepts that much at once, and the
window jumps to it (``proven``; headers are whole numbers, rounded down, so the proof takes one
unit off the reading). Beyond that, while the limiter is saturated (the meter holds at least
``SATURATED``, 75%, of our window) and no 429 of that kind came for ``quiet`` seconds, it grows
additively by ``growth`` seconds per second, at most one request's worth per answer: a probe.
A 429 of that kind at a grown window ends the probe: the window halves, falls at least to
``CEILING_SHARE`` (90%) of the ceiling (the window that failed, or lower the bound the 429's
own figures give: ``Used + Requested`` did not fit), never below what was proven nor the start;
from then on it moves only to what the meter proves (a server's enforcement window does not
change within a run: the probe is not repeated). A 429 at the start window ends no probe (it
says nothing about the window), its bound only caps growth; a bound below the proof takes the
proof back.
So a per-minute server is found with no 429 (the meter proves each step), and a stricter one
costs one 429 a run, the probe's. The window is the bucket's burst: when it grows, the new
room is what the server's meter leaves under the new window, never more (``Limiter.observe``).

**The margin** (:class:`MarginLearner`): how far apart the send delays of two requests may be
(see ``scheduler.limits._bucket``). The configured ``margin_seconds`` is the start and the
ceiling. An answer carrying the server's own time on the request (``openai-processing-ms``)
bounds that request's send delay: it reached the server's meter no later than ``R = answer -
admission - processing`` after its admission, and no sooner than at once, so two send delays
differ by at most the largest ``R``. After ``MARGIN_SAMPLES`` such answers the margin is the
largest ``R`` of the last ``MARGIN_MEMORY`` seconds (two half-spans: the current one and the one
before) plus ``MARGIN_FLOOR``, never above the configured margin. A 429 takes it back to the
configured margin and starts the count again: the limiter does not bet its next request on a
bound a refusal may have just disproved. Without the header (gateways that do not send it) the
margin stays as configured. ``R`` is an upper bound (it holds the answer's way back too), so a
network with a long round trip keeps the configured margin; a short one (the same rack, a local
gateway, the simulator) earns the ~5% a 1 s-window server's empty-meter wait otherwise loses to
50 ms of margin on every request above the server's slice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

__all__ = ["ChargeLearner", "MarginLearner", "WindowLearner"]

logger = logging.getLogger("scheduler.limits")

MIN_FACTOR = 0.2
MAX_FACTOR = 5.0
MAX_STEP = 1.2  # the factor moves at most 20% per answer
CONFIDENCE = 20.0  # the sums must outweigh one pair's residual this many times to be trusted
FIRST_NOISE = 0.25  # the noise assumed of the first pair, as a share of its charge
FIRST_LAG = 0.25  # seconds of the limit: the least noise assumed of a first pair of readings
# Within this of the formula the formula is kept: lagging headers (0.2-2 s, in the simulator)
# bias the sums by up to ~6%, and a small departure is covered by the clamps and cooldowns.
DEADBAND = 0.08
ANNOUNCE_DEPARTURE = 0.10  # log once when the learnt charge is this far from the formula
# The image share of the pairs must spread this much (standard deviation) for the image tokens
# and the rest to be learnt apart; under it (text only, or one request shape) one factor.
MIN_SHARE_SPREAD = 0.03
# The split is used only when one factor would misprice the requests by more than this (the
# standard deviation of its error per request, relative): below it the one factor is as good and
# steadier. Half the deadband: x1.5 images at 8% kept one factor (2.0 429s per 1,000 after the
# first 20) and got 0.2 split.
SPLIT_GAIN = 0.02
# The window grows only while the server's meter holds this share of it: a per-second server's
# meter never holds more than a second's worth, so growth stalls soon above it (0.5 let a
# per-second server see 8 429s in 1,200 requests, 0.9 starved lagging headers: 62% of the limit).
SATURATED = 0.75
# The margin: answers with the server's processing time needed before it leaves the configured
# one, how long the largest send-delay bound is remembered, and the slack kept over it (timer
# granularity, the header's whole milliseconds).
MARGIN_SAMPLES = 10
MARGIN_MEMORY = 300.0
MARGIN_FLOOR = 0.005
# After a 429 the window falls at least this far under the ceiling it set (the window that
# failed, or the bound the 429's figures give).
CEILING_SHARE = 0.9


@dataclass(slots=True, kw_only=True)
class ChargeLearner:
    """Learns ``server charge / our estimate`` for one limit group; see the module docstring."""

    # The learnt charge per estimated token: of a request's image tokens and of the rest (text
    # and completion reserve); equal while the answers cannot tell them apart (one factor).
    rest_factor: float = 1.0
    image_factor: float = 1.0
    # Both blended by the image share of what was recently admitted: the overall learnt ratio.
    factor: float = 1.0
    memory: float = 60.0  # seconds: the time constant of the forgotten sums
    # Forgotten sums of the server's charge and of our estimates, and when they were last decayed.
    charged: float = 0.0
    estimated: float = 0.0
    summed_at: float | None = None
    # Forgotten sums over pairs (image estimate i, estimate e, charge c) of i, i*i/e and i*c/e:
    # with ``charged`` and ``estimated`` the normal equations of the per-component fit.
    imaged: float = 0.0
    image_square: float = 0.0
    image_charged: float = 0.0
    # The previous reading of the chain: when, the server's meter, our cumulative estimates (all
    # tokens, and the image tokens among them).
    anchor_at: float | None = None
    anchor_used: float = 0.0
    anchor_estimates: float = 0.0
    anchor_images: float = 0.0
    # Mean absolute residual of one pair against the fit: how noisy the readings are.
    noise: float = 0.0
    samples: int = 0
    announced: bool = False

    def charge(self, estimate: float, image: float = 0.0, *, limit: float = math.inf) -> int:
        """The tokens admission charges for a request estimated at ``estimate``, ``image`` of
        them for its images. The learnt charge never takes a request over the per-minute
        ``limit``: one that fits by its estimate stays admissible."""
        if self.rest_factor == 1.0 and self.image_factor == 1.0:
            return math.ceil(estimate)
        learnt = math.ceil(self.predict(estimate, image))
        return int(min(learnt, max(math.ceil(estimate), limit)))

    def predict(self, estimate: float, image: float = 0.0) -> float:
        """The learnt charge of ``estimate`` tokens, ``image`` of them for images (unrounded)."""
        image = min(max(image, 0.0), estimate)
        return self.rest_factor * (estimate - image) + self.image_factor * image

    def read_remaining(
        self,
        *,
        remaining: float,
        limit: float,
        estimates: float,
        now: float,
        images: float = 0.0,
        alone: tuple[float, float, float] | None = None,
    ) -> bool:
        """Learn from a ``remaining`` reading; ``estimates`` is our cumulative estimate admitted,
        ``images`` the image tokens among it.

        ``alone`` is ``(admitted_at, estimate, image)`` of the request the answer belongs to when
        nothing was admitted after it: see :meth:`_read_alone`. Returns True when the charge
        changed.
        """
        used = limit - remaining
        anchor_at = self.anchor_at
        busy = used > 0.0
        if anchor_at is None or not busy or now <= anchor_at:
            if anchor_at is None or not busy or now < anchor_at:
                self.restart(now if busy else None, used=used, estimates=estimates, images=images)
            return False
        # On the mean of both ends: selecting pairs on one end's reading selects that end's
        # noise (lagging headers measured in the simulator: -10% on the anchor alone, +30% on
        # the lower end, within 2% on the mean); the new end is the larger of the reading and
        # the prediction, so a pair is not dropped for the cheap requests it holds.
        drain = (now - anchor_at) * limit / 60.0
        admitted = estimates - self.anchor_estimates
        admitted_images = images - self.anchor_images
        predicted = self.anchor_used + self.predict(admitted, admitted_images) - drain
        if drain > 0.5 * (self.anchor_used + max(used, predicted)):
            # The meter may have run empty since the anchor (and stopped draining): no pair,
            # but perhaps the charge of one request alone on an empty meter.
            learnt = alone is not None and self._read_alone(
                used=used, limit=limit, estimates=estimates, images=images, now=now, alone=alone
            )
            self.restart(now, used=used, estimates=estimates, images=images)
            return learnt
        consumed = used - self.anchor_used + (now - anchor_at) * limit / 60.0
        self.anchor_at, self.anchor_used = now, used
        self.anchor_estimates, self.anchor_images = estimates, images
        # A reading dated a little off moves its pair by the drain of that error: the first
        # pair's noise is at least FIRST_LAG seconds of the limit.
        floor = FIRST_LAG * limit / 60.0
        return self._add(consumed, admitted, now, image=admitted_images, floor=floor)

    def _read_alone(
        self,
        *,
        used: float,
        limit: float,
        estimates: float,
        images: float,
        now: float,
        alone: tuple[float, float, float],
    ) -> bool:
        """The charge of one request that found the server's meter empty and was alone on it.

        Sparse traffic (large requests, each under a second's drain) empties the meter between
        answers, so no pair of readings can be used; but when the previous reading, drained to
        the request's admission, shows the meter empty then, and nothing was admitted after it,
        the meter held only this request since: its charge is ``used + rate * (now -
        admitted_at)`` (an upper bound by the send delay's drain, the safe side).
        """
        admitted_at, estimate, image = alone
        anchor_at = self.anchor_at
        if anchor_at is None or estimate <= 0.0 or not anchor_at <= admitted_at <= now:
            return False
        rate = limit / 60.0
        before = self.predict(
            estimates - estimate - self.anchor_estimates, images - image - self.anchor_images
        )
        if self.anchor_used + before - rate * (admitted_at - anchor_at) > 0.0:
            return False  # the meter perhaps still held earlier requests
        return self._add(used + rate * (now - admitted_at), estimate, now, image=image)

    def read_requested(
        self, *, requested: float, estimate: float, now: float, image: float = 0.0
    ) -> bool:
        """Learn from a 429's ``Requested N`` for a request we estimated at ``estimate``
        (``image`` of it for its images): one exact row."""
        self.restart(None)
        if not (requested > 0 and estimate > 0):
            return False
        return self._add(float(requested), float(estimate), now, image=float(image))

    def restart(
        self,
        now: float | None,
        *,
        used: float = 0.0,
        estimates: float = 0.0,
        images: float = 0.0,
    ) -> None:
        """Break the chain of readings (the next one starts anew), keeping what was learnt."""
        self.anchor_at = now
        self.anchor_used = used
        self.anchor_estimates = estimates
        self.anchor_images = images

    def _split(self) -> tuple[float, float] | None:
        """The per-component ratios ``(rest, image)`` the sums fit, or None when they cannot
        tell the components apart or one factor prices every request well enough.

        A weighted least squares of each pair's charge per estimated token on its image share
        (weight: its estimate, so the sums telescope as the one factor's do); its mean is the
        one factor's ratio. It needs the shares to spread, and the split to matter: the one
        factor mispricing requests (by the spread of the shares) more than ``SPLIT_GAIN``.
        """
        total = self.estimated
        if total <= 0.0 or self.imaged <= 0.0:
            return None
        share = self.imaged / total
        spread = self.image_square / total - share * share
        if spread < MIN_SHARE_SPREAD * MIN_SHARE_SPREAD:
            return None
        ratio = self.charged / total
        slope = (self.image_charged / total - share * ratio) / spread
        rest = ratio - slope * share
        image = rest + slope
        if not (MIN_FACTOR <= rest <= MAX_FACTOR and MIN_FACTOR <= image <= MAX_FACTOR):
            return None  # not a price list of these two components: noise, or another model
        if abs(slope) * math.sqrt(spread) <= SPLIT_GAIN * ratio:
            return None
        return rest, image

    def _fit_image(self) -> float:
        """The image tokens' ratio the sums fit when the rest is charged as estimated."""
        return (self.image_charged - self.imaged + self.image_square) / self.image_square

    def _fit_rest(self) -> float:
        """The rest's ratio the sums fit when the image tokens are charged as estimated."""
        square = self.estimated - 2.0 * self.imaged + self.image_square
        return (self.charged - self.image_charged - self.imaged + self.image_square) / square

    def _add(
        self,
        charged: float,
        estimated: float,
        now: float,
        *,
        image: float = 0.0,
        floor: float = 0.0,
    ) -> bool:
        if self.summed_at is not None and now > self.summed_at:
            decay = math.exp(-(now - self.summed_at) / self.memory)
            self.charged *= decay
            self.estimated *= decay
            self.imaged *= decay
            self.image_square *= decay
            self.image_charged *= decay
        self.summed_at = now
        self.charged += charged
        self.estimated += estimated
        image = min(max(image, 0.0), estimated)
        if image > 0.0:
            self.imaged += image
            self.image_square += image * image / estimated
            self.image_charged += image * charged / estimated
        if self.estimated <= 0.0:
            return False
        self.samples += 1
        ratio = self.charged / self.estimated
        split = self._split()
        if split is None:
            residual = abs(charged - ratio * estimated)
        else:
            residual = abs(charged - split[0] * (estimated - image) - split[1] * image)
        # The first pair fits its own ratio exactly: its residual says nothing, so the noise
        # starts at a quarter of its charge (a 429's Requested N at 2.03 s, then one lagging
        # reading, had taken the factor to 1.4x for a minute: 91% of the limit).
        if self.samples == 1:
            self.noise = max(residual, FIRST_NOISE * charged, floor)
        else:
            self.noise = 0.8 * self.noise + 0.2 * residual
        # The sums' error is about one pair's residual (the rest telescopes): trust the ratio in
        # proportion to how far the estimates summed outweigh it (CONFIDENCE residuals: ~5%).
        trust = min(1.0, self.estimated / (CONFIDENCE * self.noise)) if self.noise > 0 else 1.0
        old = (self.rest_factor, self.image_factor)
        rest, image_ratio = (ratio, ratio) if split is None else split
        rest, image_ratio = _target(rest, trust), _target(image_ratio, trust)
        if split is not None and (rest == 1.0) != (image_ratio == 1.0):
            # One component keeps the formula (the deadband): fit the other given that.
            if rest == 1.0:
                image_ratio = _target(self._fit_image(), trust)
            else:
                rest = _target(self._fit_rest(), trust)
        self.rest_factor = _step(old[0], rest)
        self.image_factor = _step(old[1], image_ratio)
        share = self.imaged / self.estimated
        self.factor = self.rest_factor + (self.image_factor - self.rest_factor) * share
        departed = max(abs(self.rest_factor - 1.0), abs(self.image_factor - 1.0))
        if not self.announced and departed > ANNOUNCE_DEPARTURE:
            self.announced = True
            if self.rest_factor == self.image_factor:
                logger.warning(
                    "the server charges %.2fx our token estimate (learnt from %d answers: "
                    "%.0f tokens charged for %.0f estimated); admission now uses the learnt "
                    "charge",
                    self.factor,
                    self.samples,
                    self.charged,
                    self.estimated,
                )
            else:
                logger.warning(
                    "the server charges %.2fx our token estimate: %.2fx for images, %.2fx for "
                    "text and completion (learnt from %d answers: %.0f tokens charged for %.0f "
                    "estimated, %.0f of them for images); admission now uses the learnt charge",
                    self.factor,
                    self.image_factor,
                    self.rest_factor,
                    self.samples,
                    self.charged,
                    self.estimated,
                    self.imaged,
                )
        return (self.rest_factor, self.image_factor) != old


def _target(ratio: float, trust: float) -> float:
    """The factor a learnt ``ratio`` asks for: trusted in part, the formula within the deadband,
    within the clamps."""
    ratio = 1.0 + trust * (ratio - 1.0)
    if abs(ratio - 1.0) <= DEADBAND:
        ratio = 1.0
    return min(MAX_FACTOR, max(MIN_FACTOR, ratio))


def _step(old: float, target: float) -> float:
    """``old`` moved toward ``target`` by at most ``MAX_STEP`` (one answer's move)."""
    return min(old * MAX_STEP, max(old / MAX_STEP, target))


@dataclass(slots=True, kw_only=True)
class WindowLearner:
    """Learns the server's enforcement window for one limit (tokens or requests)."""

    start: float  # seconds: the configured burst, and the floor
    seconds: float = 0.0  # the learnt window (0: not set yet, the start)
    growth: float = 1.0  # seconds of window per second of saturated, quiet time
    quiet: float = 5.0  # seconds without a 429 of this kind before growing
    fixed: bool = False
    ceiling: float = math.inf  # seconds: a window the server refused (or its 429's bound)
    failed: float = math.inf  # seconds: the smallest grown window a 429 refused (the probe's end)
    proven: float = 0.0  # seconds: the most the server's meter was seen holding
    last_refused: float = -math.inf
    grown_at: float | None = None

    def __post_init__(self) -> None:
        if not self.start > 0:
            raise ValueError(f"start must be positive, got {self.start!r}")
        if self.seconds <= 0:
            self.seconds = self.start

    def _top(self) -> float:
        """The largest window growth may reach: 60 s (or ``CEILING_SHARE`` of a 429's bound)
        until a 429 refuses a grown window; after one, only what the meter proves (every probe
        past the server's window is a 429, and a request above its slice makes the 429's bound
        loose: 1.9 s at 1 s). A server's enforcement window does not change within a run, so
        the probe is never repeated. A 429 at the start window ends no probe: it says nothing
        about the window (a price mismatch, a limit told too high)."""
        if self.failed < math.inf:
            return self.proven
        return min(60.0, CEILING_SHARE * self.ceiling)

    def saturated(self, *, used: float, limit: float, now: float, largest: float = 0.0) -> bool:
        """Learn from the server's meter (``used`` of ``limit`` per minute) at an answer.

        A meter holding more than ``largest`` (our largest request: a request above the slice
        is let in alone on an empty meter) proves the server lets that much in at once: the
        window jumps to it. Beyond what is proven, the window grows while the meter holds
        ``SATURATED`` of it and no 429 of this kind came for ``quiet`` seconds. Returns True
        when the window changed.
        """
        last, self.grown_at = self.grown_at, now
        if self.fixed or limit <= 0:
            return False
        held = used * 60.0 / limit
        # Headers are whole numbers and ``remaining`` is rounded down, so the meter may hold up
        # to one unit less than they say: at 500 RPM over 1 s (8.3 requests) a reading of 9
        # "proved" 1.08 s and every retry was refused. Proof takes the unit off.
        proof = (used - 1.0) * 60.0 / limit
        # A refused request may still count on the server's meter (the real service counts it
        # against the minute's requests): for a minute after a 429 the meter proves nothing.
        if used - 1.0 > largest and proof > self.proven and now - self.last_refused >= 60.0:
            self.proven = min(60.0, proof)
        top = self._top()
        grown = min(top, self.proven)
        if (
            last is not None
            and now > last
            and now - self.last_refused >= self.quiet
            and held >= SATURATED * self.seconds
        ):
            # At most one request's worth per answer: answers come in bursts after gaps, and a
            # step of the whole gap's growth (0.77 s at once at 500 RPM) let six requests past
            # the server's window before the first 429 came back.
            step = min(self.growth * (now - last), max(largest, 1.0) * 60.0 / limit)
            grown = max(grown, min(top, self.seconds + step))
        if grown <= self.seconds:
            return False
        self.seconds = grown
        return True

    def refused(
        self,
        now: float,
        *,
        used: float | None = None,
        requested: float | None = None,
        limit: float | None = None,
    ) -> bool:
        """A 429 of this kind: shrink the window; True when it changed.

        The window that failed is a ceiling, and so is the bound the 429's figures give (the
        meter ``used`` plus the ``requested`` charge that did not fit, per minute of
        ``limit``: the server's window is below it). The window halves, and falls at least to
        ``CEILING_SHARE`` of the ceiling, but never below what the server's meter was seen
        holding (``proven``) nor below the start.
        """
        self.last_refused = now
        self.grown_at = now
        if self.fixed:
            return False
        old = self.seconds
        if old > self.start:  # a grown window failed: the probe is over
            self.failed = min(self.failed, old)
            self.ceiling = min(self.ceiling, old)
        if used is not None and requested is not None and limit:
            bound = (used + requested) * 60.0 / limit
            self.ceiling = min(self.ceiling, bound)
            if self.proven >= bound:  # the server refused less than the meter "proved"
                self.proven = CEILING_SHARE * bound
        target = max(self.proven, min(old / 2.0, CEILING_SHARE * self.ceiling))
        self.seconds = max(self.start, min(old, target))
        return self.seconds != old


@dataclass(slots=True, kw_only=True)
class MarginLearner:
    """Learns the margin at the cap from the send-delay bound of answers; see the module doc."""

    configured: float  # seconds: the configured margin, the start and the ceiling
    seconds: float = -1.0  # the margin in use (negative: not set yet, the configured one)
    fixed: bool = False
    samples: int = 0  # answers with a processing time since the start (or the last 429)
    peak: float = 0.0  # the largest send-delay bound of the current half-span
    previous: float = 0.0  # ... and of the one before it
    span_at: float | None = None  # when the current half-span began

    def __post_init__(self) -> None:
        if not (self.configured >= 0 and math.isfinite(self.configured)):
            raise ValueError(f"margin must be >= 0 seconds, got {self.configured!r}")
        if self.seconds < 0:
            self.seconds = self.configured

    def heard(self, *, elapsed: float, processing: float | None, now: float) -> bool:
        """An answer ``elapsed`` seconds after its admission, ``processing`` of them (the
        server's word) spent at the server; True when the margin changed."""
        if processing is None or not math.isfinite(elapsed):
            return False
        bound = max(0.0, elapsed - processing)
        half = MARGIN_MEMORY / 2.0
        if self.span_at is None:
            self.span_at = now
        elif now - self.span_at >= half:
            # A half-span over: the one before is forgotten (both, after a long silence).
            self.previous = self.peak if now - self.span_at < 2 * half else 0.0
            self.peak = 0.0
            self.span_at = now
        self.peak = max(self.peak, bound)
        self.samples += 1
        if self.fixed or self.samples < MARGIN_SAMPLES:
            return False  # a fixed margin still measures the bound (see ``bound``)
        old = self.seconds
        self.seconds = min(self.configured, MARGIN_FLOOR + max(self.peak, self.previous))
        return self.seconds != old

    @property
    def bound(self) -> float:
        """The largest send-delay bound remembered (seconds; 0 before any answer)."""
        return max(self.peak, self.previous)

    def refused(self) -> bool:
        """A 429: back to the configured margin, and count again; True when it changed."""
        old = self.seconds
        self.seconds = self.configured
        self.samples = 0
        return self.seconds != old
