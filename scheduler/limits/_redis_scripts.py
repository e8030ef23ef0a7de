"""The Lua scripts of the shared limiter: one atomic script per operation, on Redis time."""

from __future__ import annotations

from .._redis import LuaScript

__all__ = []


# Shared by every script. KEYS (the same for every script, see ``RedisLimiter._keys``):
# [1] the state hash, [2] tickets waiting (id -> "class c q e owner"), [3] tickets granted and
# not yet collected (id -> "c q at tail"), [4] owners (id -> Redis time of their last call),
# [5] slow start's probes out (zset id -> time granted), [6] the learnt charge (ChargeLearner's
# fields and a version), [7..] one FIFO list of ticket ids per priority class, highest first.
# ARGV[1..4] = configured tpm, rpm, burst_seconds, margin_seconds. A limit learned from headers
# replaces the configured one, as in the in-memory limiter. The margin (see scheduler.bucket): a
# tat may lie up to ``mg`` seconds in the past (the bucket has been full that long: level up to
# capacity + mg * rate), and a request is due ``mg`` seconds after its place in the schedule
# (``at = tat + mg - ...``), so it needs the reserve too; a take starts from ``max(tat, at) >=
# now``, which forgets the room above capacity.
_PRELUDE = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'tat_t', 'tat_r', 'cool', 'tpm', 'rpm', 'adm_t', 'adm_r',
  'shift', 'adm_e', 'heard', 'waiting', 'adm_i')
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
local adm_e = tonumber(s[9]) or 0
local heard = tonumber(s[10]) or 0
local waiting = tonumber(s[11]) or 0
-- The image tokens among the estimates admitted (the charge is learnt per component).
local adm_i = tonumber(s[12]) or 0
local function fmt(x) return string.format('%.6f', x) end
local function int(x) return string.format('%d', x) end
local function save()
  redis.call('HSET', key, 'tat_t', fmt(tat_t), 'tat_r', fmt(tat_r), 'cool', fmt(cool),
    'adm_t', int(adm_t), 'adm_r', int(adm_r), 'shift', fmt(shift), 'adm_e', int(adm_e),
    'heard', int(heard), 'waiting', int(waiting), 'adm_i', int(adm_i))
  for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, 3600) end
end
-- The learnt charge's factors: overall, of the rest and of the images (a hash written before
-- the per-component fields existed has one factor).
local function state()
  local f = redis.call('HMGET', KEYS[6], 'factor', 'rest_factor', 'image_factor')
  local one = f[1] or '1'
  return {fmt(cap_t - (tat_t - now) * rt), fmt(cap_r - (tat_r - now) * rr),
    int(tpm), int(rpm), fmt(math.max(0, cool - now)), fmt(shift), int(heard),
    one, fmt(now), int(adm_e), int(adm_i), f[2] or one, f[3] or one}
end
-- Less room than booked: move the schedule's tail and every granted-but-unsent slot later
-- (a slot's holder re-checks ``shift`` before it sends); never move it earlier.
local function delay(seconds)
  if seconds > 0 then
    tat_t, tat_r = tat_t + seconds, tat_r + seconds
    shift = shift + seconds
  end
end
-- The server answered: slow start is over for every process.
local function hear()
  heard = 1
  redis.call('DEL', KEYS[5])
end
"""


# ARGV[5..6] = tokens and requests to give back (negative: charge), ARGV[7..8] = estimated
# tokens, and image tokens among them, admitted from leases since the last call, then: owner
# id, horizon (seconds a class may book ahead; < 0: unbounded), slow start's slice (0: off),
# the number of classes and (name, weight) per class; then counted lists of ids: probes
# answered, tickets abandoned, tickets to poll; then n asks (id, class index, tokens, requests,
# estimate, image estimate).
#
# Answers {answers, state, next}: one per ask then one per poll. "w:<wait>:<at>:<admitted
# tokens>:<admitted requests>:<shift>:<admitted estimates>:<probe>" is a slot (server time,
# totals including this one, the schedule's delay so far, 1 if a slow-start probe); "q" a ticket
# still waiting in its class; "x" over a learned limit; "g" a ticket that is gone (its owner
# looked dead, or Redis lost it: ask again). ``next`` is when a waiting ticket's owner should
# poll again (seconds; -1 when nothing waits).
#
# A request goes at once when no ticket waits and its slot lies within the horizon; otherwise it
# becomes a ticket. Tickets are granted in class order (the in-memory limiter's rule: the
# weighted class with the fewest tokens admitted per weight, then the weight-0 classes in
# order; FIFO inside a class) as far as their slots lie within the horizon, by whichever
# process calls; their owners collect the slots when they poll. A slot, once granted, is never
# granted again: the tail only moves back for tokens given back, never to make room.
_ACQUIRE = LuaScript(
    _PRELUDE
    + """
local tk, gr, own, pr = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local STALE, PROBE_TTL, SLOW_POLL = 10, 60, 0.1
local pos = 5
local function arg() local v = ARGV[pos]; pos = pos + 1; return v end
local give_t, give_r = tonumber(arg()), tonumber(arg())
adm_e = adm_e + tonumber(arg())
adm_i = adm_i + tonumber(arg())
local owner = arg()
local horizon = tonumber(arg())
local slice = tonumber(arg())
local ncls = tonumber(arg())
local names, weights, fin = {}, {}, {}
for k = 1, ncls do
  names[k] = arg()
  weights[k] = tonumber(arg())
  fin[k] = tonumber(redis.call('HGET', key, 'fin:' .. names[k])) or 0
end
redis.call('HSET', own, owner, fmt(now))
tat_t = math.max(now - mg, tat_t - give_t / rt)
tat_r = math.max(now - mg, tat_r - give_r / rr)
for _ = 1, tonumber(arg()) do redis.call('ZREM', pr, arg()) end

local function fields(rec)
  local out = {}
  for word in string.gmatch(rec, '%S+') do out[#out + 1] = word end
  return out
end
local function may_probe()
  if heard == 1 or slice <= 0 then return true end
  return redis.call('ZCOUNT', pr, now - PROBE_TTL, '+inf') < slice
end
local function due(c, q)
  return math.max(now, cool,
    tat_t + mg - (cap_t - math.min(c, cap_t)) / rt,
    tat_r + mg - (cap_r - math.min(q, cap_r)) / rr)
end
-- Book a slot at ``at``; the part of the answer after "w:<wait>:<at>:".
local function book(id, c, q, e, im, at)
  tat_t = math.max(tat_t, at) + c / rt
  tat_r = math.max(tat_r, at) + q / rr
  adm_t, adm_r, adm_e, adm_i = adm_t + c, adm_r + q, adm_e + e, adm_i + im
  local probe = '0'
  if heard ~= 1 and slice > 0 then
    redis.call('ZADD', pr, now, id)
    probe = '1'
  end
  return int(adm_t) .. ':' .. int(adm_r) .. ':' .. fmt(shift) .. ':' .. int(adm_e) .. ':' .. probe
end
local function head_class()
  local best, strict
  for k = 1, ncls do
    if redis.call('LLEN', KEYS[6 + k]) > 0 then
      if weights[k] > 0 then
        if best == nil or fin[k] < fin[best] then best = k end
      elseif strict == nil then
        strict = k
      end
    end
  end
  return best or strict
end
-- Grant heads in class order while their slots lie within the horizon; ``blocked`` says why
-- it stopped: nil (nothing waits), 'slow' (slow start's slice is out) or the head's slot.
local blocked
local function advance()
  blocked = nil
  while true do
    local k = head_class()
    if k == nil then
      waiting = 0
      return
    end
    local queue = KEYS[6 + k]
    local id = redis.call('LINDEX', queue, 0)
    local rec = redis.call('HGET', tk, id)
    local f = rec and fields(rec)
    if not f or now - (tonumber(redis.call('HGET', own, f[5])) or 0) > STALE then
      redis.call('LPOP', queue)  -- its owner stopped polling: drop it unbooked
      redis.call('HDEL', tk, id)
      waiting = math.max(0, waiting - 1)
    else
      local c, q, e, im = tonumber(f[2]), tonumber(f[3]), tonumber(f[4]), tonumber(f[6]) or 0
      local grant
      if c > tpm or q > rpm then
        grant = 'x'
      elseif not may_probe() then
        blocked = 'slow'
        return
      else
        local at = due(c, q)
        if horizon >= 0 and at > now + horizon then
          blocked = at
          return
        end
        if weights[k] > 0 then fin[k] = fin[k] + c / weights[k] end
        grant = int(c) .. ' ' .. int(q) .. ' ' .. fmt(at) .. ' ' .. book(id, c, q, e, im, at)
      end
      redis.call('LPOP', queue)
      redis.call('HDEL', tk, id)
      redis.call('HSET', gr, id, grant)
      waiting = math.max(0, waiting - 1)
    end
  end
end

-- Abandoned tickets: unqueued, or their slot given back if one was granted meanwhile.
for _ = 1, tonumber(arg()) do
  local id = arg()
  local rec = redis.call('HGET', tk, id)
  if rec then
    redis.call('LREM', KEYS[6 + tonumber(fields(rec)[1])], 1, id)
    redis.call('HDEL', tk, id)
    waiting = math.max(0, waiting - 1)
  else
    local g = redis.call('HGET', gr, id)
    if g and g ~= 'x' then
      local f = fields(g)
      tat_t = math.max(now - mg, tat_t - tonumber(f[1]) / rt)
      tat_r = math.max(now - mg, tat_r - tonumber(f[2]) / rr)
      redis.call('HDEL', gr, id)
      redis.call('ZREM', pr, id)
    end
  end
end
local polls = {}
for n = 1, tonumber(arg()) do polls[n] = arg() end

advance()
local out = {}
for i = 1, tonumber(arg()) do
  local id, k = arg(), tonumber(arg())
  local c, q, e = tonumber(arg()), tonumber(arg()), tonumber(arg())
  local im = tonumber(arg())
  if c > tpm or q > rpm then
    out[i] = 'x'
  else
    local at = due(c, q)
    if waiting == 0 and may_probe() and (horizon < 0 or at <= now + horizon) then
      out[i] = 'w:' .. fmt(at - now) .. ':' .. fmt(at) .. ':' .. book(id, c, q, e, im, at)
    else
      -- A class that starts waiting gets no credit for the time it did not.
      if redis.call('LLEN', KEYS[6 + k]) == 0 then
        local low
        for j = 1, ncls do
          if weights[j] > 0 and redis.call('LLEN', KEYS[6 + j]) > 0 then
            if low == nil or fin[j] < low then low = fin[j] end
          end
        end
        if low ~= nil and low > fin[k] then fin[k] = low end
      end
      redis.call('RPUSH', KEYS[6 + k], id)
      redis.call('HSET', tk, id,
        k .. ' ' .. int(c) .. ' ' .. int(q) .. ' ' .. int(e) .. ' ' .. owner .. ' ' .. int(im))
      waiting = waiting + 1
      out[i] = 'q'
      polls[#polls + 1] = id
      advance()
    end
  end
end
-- Answers for this caller's tickets (new ones included): collected slots leave the hash.
local first_poll = #out
for n, id in ipairs(polls) do
  local g = redis.call('HGET', gr, id)
  local answer
  if g then
    redis.call('HDEL', gr, id)
    if g == 'x' then
      answer = 'x'
    else
      local f = fields(g)
      answer = 'w:' .. fmt(math.max(0, tonumber(f[3]) - now)) .. ':' .. f[3] .. ':' .. f[4]
    end
  elseif redis.call('HEXISTS', tk, id) == 1 then
    answer = 'q'
  else
    answer = 'g'
  end
  out[first_poll + n] = answer
end
local nxt = -1
if waiting > 0 then
  if blocked == 'slow' then
    nxt = SLOW_POLL
  elseif type(blocked) == 'number' then
    -- Poll when the booked schedule is half a horizon ahead: each poll books half a horizon.
    nxt = math.max(0, blocked - now - horizon) + horizon / 2
  else
    nxt = SLOW_POLL
  end
end
for k = 1, ncls do redis.call('HSET', key, 'fin:' .. names[k], tostring(fin[k])) end
save()
return {out, state(), fmt(nxt)}
"""
)


# ARGV[5] = seconds. Holds everyone until then; the server said there is no room, so what is
# booked and not yet sent moves later by the pause (only the part past an earlier pause), and
# both levels drop to at most zero (plus the margin's reserve; the requests' one lower, since the
# refused request may count on the server's meter) and refill during the pause.
# A 429 is an answer: slow start is over. Answers the state.
_COOLDOWN = LuaScript(
    _PRELUDE
    + """
local until_ = now + tonumber(ARGV[5])
if tonumber(ARGV[5]) > 0 then
  delay(until_ - math.max(cool, now))
  cool = math.max(cool, until_)
  tat_t = math.max(tat_t, now + cap_t / rt - mg)
  tat_r = math.max(tat_r, now + cap_r / rr - mg) + 1 / rr
end
hear()
save()
return state()
"""
)


# ARGV[5..8] = limit and remaining tokens, limit and remaining requests ("" when absent);
# ARGV[9..11] = the server time and admitted totals of the request the headers answer ("" when
# the headers are taken as fresh); ARGV[12..13] = estimated tokens, and image tokens among
# them, admitted from leases since the last call. Any answer ends slow start. Adopts a changed
# limit (what is booked ahead keeps its tokens: the tail is rescaled to the new rate); a level
# the server shows lower than ours delays what is not yet sent by the difference (``delay``),
# never raises a level. Answers {state, the learnt charge's fields (HGETALL), 1 if the token
# limit changed}.
_OBSERVE = LuaScript(
    _PRELUDE
    + """
hear()
adm_e = adm_e + tonumber(ARGV[12])
adm_i = adm_i + tonumber(ARGV[13])
local old_rt, old_rr = rt, rr
local changed = 0
if ARGV[5] ~= '' and tonumber(ARGV[5]) > 0 and tonumber(ARGV[5]) ~= tpm then
  tpm = tonumber(ARGV[5])
  changed = 1
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
return {state(), redis.call('HGETALL', KEYS[6]), changed}
"""
)


# The learnt charge, written back if nobody wrote it since it was read: ARGV[5] = the version
# read ("" for none yet), then field/value pairs (ARGV[1..4] as for every script, unused).
# Answers {1} when written, else {0, the current fields} for the caller to learn again from.
_LEARN = LuaScript(
    """
local ch = KEYS[6]
local version = redis.call('HGET', ch, 'version') or ''
if version ~= ARGV[5] then
  return {0, redis.call('HGETALL', ch)}
end
for i = 6, #ARGV, 2 do redis.call('HSET', ch, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', ch, 'version', string.format('%d', (tonumber(version) or 0) + 1))
redis.call('EXPIRE', ch, 3600)
return {1}
"""
)
