"""The ledger's two Lua scripts: reserve and settle a tenant's meters in Redis, atomically.

Every key a script touches carries the tenant's hash tag (``gateway.meters``), so each runs
on one slot of a Redis Cluster too. Besides its meters, a tenant has ``holds`` (a hash: hold
id -> JSON of meter key -> units held) and ``deadlines`` (a sorted set: hold id -> when it
expires, in ms).

    RESERVE  KEYS: the meters, holds, deadlines
             ARGV: hold id, now (ms), deadline (ms), then per meter: units, limit (-1: none),
             key TTL (s)
        releases up to 64 holds past their deadline; then {0, i, spent, held} for the first
        meter that the units would take past its limit, else holds them on every meter and
        returns {1, 0, then per meter: spent, held (this hold included)}
    APPLY    KEYS: holds, deadlines, then the meters
             ARGV: hold id ('' for none), then per meter: units spent, key TTL (s)
        releases the hold (if still there) and adds what was spent
"""

from __future__ import annotations

RESERVE = """
local n = #KEYS - 2
local holds, deadlines = KEYS[n + 1], KEYS[n + 2]
local stale = redis.call('ZRANGEBYSCORE', deadlines, '-inf', ARGV[2], 'LIMIT', 0, 64)
for _, id in ipairs(stale) do
  local entry = redis.call('HGET', holds, id)
  if entry then
    for key, amount in pairs(cjson.decode(entry)) do
      if redis.call('EXISTS', key) == 1 then redis.call('HINCRBY', key, 'held', -amount) end
    end
  end
  redis.call('HDEL', holds, id)
  redis.call('ZREM', deadlines, id)
end
local out = {1, 0}
for i = 1, n do
  local amount, limit = tonumber(ARGV[1 + 3 * i]), tonumber(ARGV[2 + 3 * i])
  local v = redis.call('HMGET', KEYS[i], 'spent', 'held')
  local spent, held = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  if limit >= 0 and spent + held + amount > limit then
    return {0, i, spent, held}
  end
  out[1 + 2 * i], out[2 + 2 * i] = spent, held + amount
end
local entry = {}
for i = 1, n do
  local amount = tonumber(ARGV[1 + 3 * i])
  redis.call('HINCRBY', KEYS[i], 'held', amount)
  redis.call('EXPIRE', KEYS[i], ARGV[3 + 3 * i])
  entry[KEYS[i]] = amount
end
redis.call('HSET', holds, ARGV[1], cjson.encode(entry))
redis.call('ZADD', deadlines, ARGV[3], ARGV[1])
redis.call('EXPIRE', holds, 172800)
redis.call('EXPIRE', deadlines, 172800)
return out
"""

APPLY = """
local entry = false
if ARGV[1] ~= '' then entry = redis.call('HGET', KEYS[1], ARGV[1]) end
local held = {}
if entry then
  held = cjson.decode(entry)
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
for i = 3, #KEYS do
  local key = KEYS[i]
  local amount = held[key]
  if amount and redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'held', -amount)
  end
  local add = tonumber(ARGV[2 * i - 4])
  if add ~= 0 then
    redis.call('HINCRBY', key, 'spent', add)
    if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[2 * i - 3]) end
  end
end
return 1
"""
