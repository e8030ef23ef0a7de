"""The Lua scripts of the shared limiter: one atomic script per operation, on Redis time."""

from __future__ import annotations

from .._redis import LuaScript

__all__ = []


# Shared by every script. KEYS[1] = state hash; ARGV[1..4] = configured tpm, rpm, burst_seconds,
# margin_seconds. A limit learned from headers replaces the configured one, as in the in-memory
# limiter. The margin (see scheduler.bucket): a tat may lie up to ``mg`` seconds in the past (the
# bucket has been full that long: level up to capacity + mg * rate), and a request is due ``mg``
# seconds after its place in the schedule (``at = tat + mg - ...``), so it needs the reserve too;
# a take starts from ``max(tat, at) >= now``, which forgets the room above capacity.
_PRELUDE = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'tat_t', 'tat_r', 'cool', 'tpm', 'rpm', 'adm_t', 'adm_r',
  'shift')
local tpm = tonumber(s[4]) or tonumber(ARGV[1])
local rpm = tonumber(s[5]) or tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local mg = tonumber(ARGV[4])
local rt, rr, cap_t, cap_r
local function shape()
  rt, rr = tpm / 60, rpm / 60
  cap_t, cap_r = math.min(tpm, burst * rt), math.min(rpm, burst * rr)
end
shape()
local tat_t = math.max(now - mg, tonumber(s[1]) or (now - mg))
local tat_r = math.max(now - mg, tonumber(s[2]) or (now - mg))
local cool = tonumber(s[3]) or 0
local adm_t, adm_r = tonumber(s[6]) or 0, tonumber(s[7]) or 0
local shift = tonumber(s[8]) or 0
local function fmt(x) return string.format('%.6f', x) end
local function save()
  redis.call('HSET', key, 'tat_t', fmt(tat_t), 'tat_r', fmt(tat_r), 'cool', fmt(cool),
    'adm_t', string.format('%d', adm_t), 'adm_r', string.format('%d', adm_r),
    'shift', fmt(shift))
  redis.call('EXPIRE', key, 3600)
end
local function state()
  return {fmt(cap_t - (tat_t - now) * rt), fmt(cap_r - (tat_r - now) * rr),
    string.format('%d', tpm), string.format('%d', rpm), fmt(math.max(0, cool - now)),
    fmt(shift)}
end
-- Less room than booked: move the schedule's tail and every granted-but-unsent slot later
-- (a slot's holder re-checks ``shift`` before it sends); never move it earlier.
local function delay(seconds)
  if seconds > 0 then
    tat_t, tat_r = tat_t + seconds, tat_r + seconds
    shift = shift + seconds
  end
end
"""


# ARGV[5..6] = tokens and requests to give back (negative: charge), ARGV[7] = n, then n pairs
# (tokens, requests). Answers {slots, state}; a slot is "w:<wait>:<at>:<admitted tokens>:
# <admitted requests>:<shift>" (server time, totals including this one, the schedule's delay so
# far) or "x" when over a learned limit. A slot, once granted, is never granted again: the tail
# only moves back for tokens given back (released or refunded), never to make room.
_ACQUIRE = LuaScript(
    _PRELUDE
    + """
tat_t = math.max(now - mg, tat_t - tonumber(ARGV[5]) / rt)
tat_r = math.max(now - mg, tat_r - tonumber(ARGV[6]) / rr)
local out = {}
for i = 1, tonumber(ARGV[7]) do
  local c, q = tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])
  if c > tpm or q > rpm then
    out[i] = 'x'
  else
    local at = math.max(now, cool,
      tat_t + mg - (cap_t - math.min(c, cap_t)) / rt,
      tat_r + mg - (cap_r - math.min(q, cap_r)) / rr)
    tat_t = math.max(tat_t, at) + c / rt
    tat_r = math.max(tat_r, at) + q / rr
    adm_t, adm_r = adm_t + c, adm_r + q
    out[i] = 'w:' .. fmt(at - now) .. ':' .. fmt(at) .. ':' .. string.format('%d', adm_t)
      .. ':' .. string.format('%d', adm_r) .. ':' .. fmt(shift)
  end
end
save()
return {out, state()}
"""
)


# ARGV[5] = seconds. Holds everyone until then; the server said there is no room, so what is
# booked and not yet sent moves later by the pause (only the part past an earlier pause), and
# both levels drop to at most zero (plus the margin's reserve) and refill during the pause.
_COOLDOWN = LuaScript(
    _PRELUDE
    + """
local until_ = now + tonumber(ARGV[5])
delay(until_ - math.max(cool, now))
cool = math.max(cool, until_)
tat_t = math.max(tat_t, now + cap_t / rt - mg)
tat_r = math.max(tat_r, now + cap_r / rr - mg)
save()
return state()
"""
)


# ARGV[5..8] = limit and remaining tokens, limit and remaining requests ("" when absent);
# ARGV[9..11] = the server time and admitted totals of the request the headers answer ("" when
# the headers are taken as fresh). Adopts a changed limit (what is booked ahead keeps its tokens:
# the tail is rescaled to the new rate); a level the server shows lower than ours delays what is
# not yet sent by the difference (``delay``), never raises a level.
_OBSERVE = LuaScript(
    _PRELUDE
    + """
local old_rt, old_rr = rt, rr
if ARGV[5] ~= '' and tonumber(ARGV[5]) > 0 and tonumber(ARGV[5]) ~= tpm then
  tpm = tonumber(ARGV[5])
  redis.call('HSET', key, 'tpm', ARGV[5])
end
if ARGV[7] ~= '' and tonumber(ARGV[7]) > 0 and tonumber(ARGV[7]) ~= rpm then
  rpm = tonumber(ARGV[7])
  redis.call('HSET', key, 'rpm', ARGV[7])
end
shape()
if tat_t > now then tat_t = now + (tat_t - now) * old_rt / rt end
if tat_r > now then tat_r = now + (tat_r - now) * old_rr / rr end
local late = 0
local function room(remaining, limit, rate, admitted, mark)
  local r = tonumber(remaining)
  if ARGV[9] ~= '' then
    local elapsed = math.max(0, now - tonumber(ARGV[9]))
    r = math.min(limit, r + rate * elapsed) - (admitted - tonumber(mark))
  end
  return r
end
if ARGV[6] ~= '' then
  local r = math.max(room(ARGV[6], tpm, rt, adm_t, ARGV[10]) + mg * rt, cap_t - tpm)
  local level = cap_t - (tat_t - now) * rt
  if r < level then late = math.max(late, (level - r) / rt) end
end
if ARGV[8] ~= '' then
  local r = math.max(room(ARGV[8], rpm, rr, adm_r, ARGV[11]) + mg * rr, cap_r - rpm)
  local level = cap_r - (tat_r - now) * rr
  if r < level then late = math.max(late, (level - r) / rr) end
end
delay(late)
save()
return state()
"""
)
