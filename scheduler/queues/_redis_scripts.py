"""The Lua scripts of the Redis Streams queue: each state change is one atomic script.

Every script that changes a queue first checks its identity: ``meta.id`` must be the id the
worker read when it opened the queue. A Redis that restarted without persistence (or a queue
deleted by hand) has no id, or a new one, and the script answers "lost" instead of writing into
a queue that is not the one the worker was draining.
"""

from __future__ import annotations

from .._redis import LuaScript

__all__: list[str] = []

# ARGV[1] = the worker's queue id ('' to skip the check, for readers of a queue never opened).
_SAME_QUEUE = """
local function lost()
  return ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'id') ~= ARGV[1]
end
"""

# KEYS: meta, jobs, order. ARGV: group, create ('1' or '0'), a new id. Answers the queue's id,
# or nil when there is no such queue and ``create`` is '0'. A queue from before identities
# (jobs but no id) is adopted.
OPEN = LuaScript("""
local id = redis.call('HGET', KEYS[1], 'id')
if not id then
  if ARGV[2] ~= '1' and redis.call('ZCARD', KEYS[3]) == 0 then return nil end
  id = ARGV[3]
  redis.call('HSET', KEYS[1], 'id', id)
end
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
return id
""")

# KEYS: meta, worker heartbeat key, jobs, order. ARGV: id, ttl ms, group, consumer, least total
# jobs, then the entries this worker holds (their idle time is reset). Answers the total, or -1
# when the queue is lost (another id, or fewer jobs than this worker has seen: jobs are never
# deleted).
BEAT = LuaScript(
    _SAME_QUEUE
    + """
if lost() then return -1 end
local total = redis.call('ZCARD', KEYS[4])
if total < tonumber(ARGV[5]) then return -1 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
if #ARGV > 5 then
  local call = {'XCLAIM', KEYS[3], ARGV[3], ARGV[4], '0'}
  for i = 6, #ARGV do call[#call + 1] = ARGV[i] end
  call[#call + 1] = 'JUSTID'
  redis.call(unpack(call))
end
return total
"""
)

# KEYS: meta, jobs, job, result, sends. ARGV: id, group, consumer, limit, reclaim ms (0: skip
# the idle scan), heartbeat key prefix, heartbeat ttl ms.
# Takes, in order: the entries of consumers whose heartbeat key lapsed (dead workers, at once),
# entries idle past ``reclaim_after`` (a live but stuck worker), then new entries. A gap in
# the queue's clock tick longer than half the ttl means Redis itself stalled or restarted (every
# heartbeat lapsed at once): takeovers wait one ttl so live workers can beat again. Answers nil
# when lost, else flat (entry, key, job, answered, sends) tuples. A claim is a sign of life: it
# sets the claimer's own heartbeat key, so a worker whose key lapsed while it started (a long
# start-up on a busy machine, before its first beat) is not taken for dead with its jobs.
CLAIM = LuaScript(
    _SAME_QUEUE
    + """
if lost() then return nil end
local group, me, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local ttl = tonumber(ARGV[7])
redis.call('SET', ARGV[6] .. me, '1', 'PX', ttl)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tick = tonumber(redis.call('HGET', KEYS[1], 'tick') or now)
local calm = tonumber(redis.call('HGET', KEYS[1], 'calm') or 0)
if now - tick > ttl / 2 then
  calm = now + ttl
  redis.call('HSET', KEYS[1], 'calm', calm)
end
redis.call('HSET', KEYS[1], 'tick', now)
local entries = {}
local function add(list)
  for _, e in ipairs(list) do
    if #entries < limit then entries[#entries + 1] = e end
  end
end
if now >= calm then
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[2], group)) do
    local info = {}
    for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
    local name = info['name']
    if name ~= me and redis.call('EXISTS', ARGV[6] .. name) == 0 then
      if info['pending'] == 0 then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[2], group, name)
      elseif #entries < limit then
        local ids = {}
        for _, row in ipairs(redis.call('XPENDING', KEYS[2], group, '-', '+',
            limit - #entries, name)) do
          ids[#ids + 1] = row[1]
        end
        if #ids > 0 then
          add(redis.call('XCLAIM', KEYS[2], group, me, '0', unpack(ids)))
        end
      end
    end
  end
end
if tonumber(ARGV[5]) > 0 and #entries < limit then
  add(redis.call('XAUTOCLAIM', KEYS[2], group, me, ARGV[5], '0-0', 'COUNT',
    limit - #entries)[2])
end
if #entries < limit then
  local read = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', limit - #entries,
    'STREAMS', KEYS[2], '>')
  if read then add(read[1][2]) end
end
local out = {}
for _, e in ipairs(entries) do
  local key = nil
  if e[2] then
    for i = 1, #e[2], 2 do if e[2][i] == 'key' then key = e[2][i + 1] end end
  end
  if key then
    out[#out + 1] = e[1]
    out[#out + 1] = key
    out[#out + 1] = redis.call('HGET', KEYS[3], key) or ''
    out[#out + 1] = redis.call('HEXISTS', KEYS[4], key)
    out[#out + 1] = redis.call('HINCRBY', KEYS[5], key, 1)
  else
    redis.call('XACK', KEYS[2], group, e[1])
  end
end
return out
"""
)

# KEYS: meta, lines, job, order, seq, jobs, result, counts. ARGV: id, n, then n x (key, line,
# job, failure). Answers the keys added, or nil when lost.
LOAD = LuaScript(
    _SAME_QUEUE
    + """
if lost() then return nil end
local added = {}
for i = 0, tonumber(ARGV[2]) - 1 do
  local key, line, job, failure = ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  if redis.call('HSETNX', KEYS[2], key, line) == 1 then
    redis.call('HSET', KEYS[3], key, job)
    redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), key)
    if failure ~= '' then
      redis.call('HSET', KEYS[7], key, failure)
      redis.call('HINCRBY', KEYS[8], 'failed', 1)
    else
      redis.call('XADD', KEYS[6], '*', 'key', key)
    end
    added[#added + 1] = key
  end
end
return added
"""
)

# KEYS: meta, result, counts, attempts, jobs. ARGV: id, group, n, then n x (key, entry, state,
# attempts, result). Stores each result unless one is already there, and acknowledges the entry
# either way. Answers how many were stored, or -1 when lost.
RECORD = LuaScript(
    _SAME_QUEUE
    + """
if lost() then return -1 end
local recorded = 0
for i = 0, tonumber(ARGV[3]) - 1 do
  local key, entry = ARGV[4 + 5 * i], ARGV[5 + 5 * i]
  if redis.call('HSETNX', KEYS[2], key, ARGV[8 + 5 * i]) == 1 then
    redis.call('HINCRBY', KEYS[3], ARGV[6 + 5 * i], 1)
    redis.call('HINCRBY', KEYS[4], key, tonumber(ARGV[7 + 5 * i]))
    recorded = recorded + 1
  end
  if entry ~= '' then redis.call('XACK', KEYS[5], ARGV[2], entry) end
end
return recorded
"""
)

# KEYS: meta, result, jobs. ARGV: id, group, n, then n x (key, entry). Puts unanswered jobs back
# in line. Answers how many, or -1 when lost.
REQUEUE = LuaScript(
    _SAME_QUEUE
    + """
if lost() then return -1 end
local requeued = 0
for i = 0, tonumber(ARGV[3]) - 1 do
  local key, entry = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local acked = redis.call('XACK', KEYS[3], ARGV[2], entry)
  if acked == 1 and redis.call('HEXISTS', KEYS[2], key) == 0 then
    redis.call('XADD', KEYS[3], '*', 'key', key)
    requeued = requeued + 1
  end
end
return requeued
"""
)

# KEYS: meta, result, counts, jobs. ARGV: id, n, then keys. Failed results go back to pending.
RETRY = LuaScript(
    _SAME_QUEUE
    + """
if lost() then return -1 end
local retried = 0
for i = 3, tonumber(ARGV[2]) + 2 do
  local text = redis.call('HGET', KEYS[2], ARGV[i])
  if text and cjson.decode(text).state == 'failed' then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('HINCRBY', KEYS[3], 'failed', -1)
    redis.call('XADD', KEYS[4], '*', 'key', ARGV[i])
    retried = retried + 1
  end
end
return retried
"""
)

# KEYS: meta, order, counts, jobs. ARGV: id, group. Answers {total, done, failed, in flight}, or
# nil when lost.
COUNTS = LuaScript(
    _SAME_QUEUE
    + """
if lost() then return nil end
local counts = redis.call('HMGET', KEYS[3], 'done', 'failed')
local in_flight = 0
if redis.call('EXISTS', KEYS[4]) == 1 then
  local ok, info = pcall(redis.call, 'XPENDING', KEYS[4], ARGV[2])
  if ok then in_flight = info[1] end
end
return {redis.call('ZCARD', KEYS[2]), tonumber(counts[1] or 0), tonumber(counts[2] or 0),
  in_flight}
"""
)

# KEYS: jobs. ARGV: group. Answers the keys of every job in some consumer's pending list.
IN_FLIGHT = LuaScript("""
local keys = {}
if redis.call('EXISTS', KEYS[1]) == 0 then return keys end
for _, row in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000000)) do
  local entry = redis.call('XRANGE', KEYS[1], row[1], row[1])[1]
  if entry then
    for i = 1, #entry[2], 2 do
      if entry[2][i] == 'key' then keys[#keys + 1] = entry[2][i + 1] end
    end
  end
end
return keys
""")
