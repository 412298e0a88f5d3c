"""The Lua scripts of the Redis broker: each runs atomically in Redis.

The keys they take are built by `channels.brokers.redis_keys.Keys`.
"""

from __future__ import annotations

from typing import Final

__all__ = ("PRESENCE_ADD", "PRESENCE_READ", "PRESENCE_REMOVE", "PUBLISH", "READ")

# KEYS: meta, stream, and the idempotency key if the publish has one. ARGV: pub/sub
# channel, data, new epoch, history size, history ttl (ms), stream idle time (ms), the
# idempotency window (ms). Returns {offset, epoch, 1 if a duplicate else 0}.
PUBLISH: Final = """
local meta, stream, key = KEYS[1], KEYS[2], KEYS[3]
if key then
  local seen = redis.call('GET', key)
  if seen then
    local offset, first_epoch = string.match(seen, '^(%d+):(.*)$')
    return {tonumber(offset), first_epoch, 1}
  end
end
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch)
end
local top = redis.call('HINCRBY', meta, 'top', 1)
local size, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', meta, 'ttl', ttl)
if size > 0 then
  local now = redis.call('TIME')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('XADD', stream, 'MAXLEN', size, top .. '-0', 'd', ARGV[2], 't', ms)
  if ttl > 0 then redis.call('PEXPIRE', stream, ttl) else redis.call('PEXPIRE', stream, ARGV[6]) end
else
  redis.call('DEL', stream)
end
redis.call('PEXPIRE', meta, ARGV[6])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. top .. ':' .. ARGV[2])
if key then redis.call('SET', key, top .. ':' .. epoch, 'PX', ARGV[7]) end
return {top, epoch, 0}
"""

# KEYS: meta, stream. ARGV: after (-1 for the newest), limit (-1 for all), the epoch to
# start the stream with if it has none ('' to leave it be), stream idle time (ms).
# Returns {epoch, top, {id, data, id, data, ...}}, without the expired entries.
READ: Final = """
local meta, stream = KEYS[1], KEYS[2]
local found = redis.call('HMGET', meta, 'epoch', 'top', 'ttl')
local epoch = found[1]
if not epoch then
  if ARGV[3] == '' then return {'', 0, {}} end
  epoch = ARGV[3]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
  found[2] = 0
end
if ARGV[3] ~= '' then redis.call('PEXPIRE', meta, ARGV[4]) end
local top, ttl = tonumber(found[2] or 0), tonumber(found[3] or 0)
local after, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local entries = {}
if limit ~= 0 then
  if after < 0 then
    if limit < 0 then
      entries = redis.call('XRANGE', stream, '-', '+')
    else
      local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
      for index = #newest, 1, -1 do entries[#entries + 1] = newest[index] end
    end
  elseif after < top then
    if limit < 0 then
      entries = redis.call('XRANGE', stream, (after + 1) .. '-0', '+')
    else
      entries = redis.call('XRANGE', stream, (after + 1) .. '-0', '+', 'COUNT', limit)
    end
  end
end
local oldest_allowed = -1
if ttl > 0 then
  local now = redis.call('TIME')
  oldest_allowed = now[1] * 1000 + math.floor(now[2] / 1000) - ttl
end
local kept = {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  if tonumber(fields[4]) > oldest_allowed then
    kept[#kept + 1] = entry[1]
    kept[#kept + 1] = fields[2]
  end
end
return {epoch, top, kept}
"""


# Presence: KEYS[1] the hash of entries (client -> its ClientInfo as JSON), KEYS[2] their
# expiry sorted set, KEYS[3] the hash of users' entry counts, kept for channels whose
# members are users (a user joins with its first entry and leaves with its last). Every
# decision is O(1); `_PRUNE` drops the expired entries (`ms` is now) and announces the
# leave of a counted user whose last entry expired, on the pub/sub channel ARGV[5].
_PRUNE = """
for _, client in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ms)) do
  local value = redis.call('HGET', KEYS[1], client)
  redis.call('HDEL', KEYS[1], client)
  if value then
    local ok, info = pcall(cjson.decode, value)
    if ok and type(info.user) == 'string' and redis.call('HEXISTS', KEYS[3], info.user) == 1 then
      if redis.call('HINCRBY', KEYS[3], info.user, -1) <= 0 then
        redis.call('HDEL', KEYS[3], info.user)
        redis.call('PUBLISH', ARGV[5], '!l' .. value)
      end
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms)
"""
_NOW = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
"""

# KEYS: presence. ARGV: client id, info, time to live (ms), its user if the channel's
# members are users (else ''), the pub/sub channel, and 'refresh' when a node renews its
# entries. Returns 1 if the entry is new and its user's first (a new entry without a user
# counts as first). A renewal that finds its entry gone (Redis lost it) writes it again
# and, for a user who had no entry left, announces it joining again (its leave may have
# been announced meanwhile; a client that knows the member ignores the repeat).
PRESENCE_ADD: Final = (
    _NOW
    + _PRUNE
    + """
local first = 0
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  first = 1
  if ARGV[4] ~= '' and redis.call('HINCRBY', KEYS[3], ARGV[4], 1) > 1 then first = 0 end
  if first == 1 and ARGV[6] == 'refresh' and ARGV[4] ~= '' then
    redis.call('PUBLISH', ARGV[5], '!j' .. ARGV[2])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
-- The counts outlive the entries they count, so that the last ones expiring still
-- find them and announce their users' leave.
redis.call('PEXPIRE', KEYS[3], 2 * tonumber(ARGV[3]))
return first
"""
)

# KEYS: presence. ARGV: client, its user, -, -, the pub/sub channel, the leave
# announcement ('' for none). Forgets the client; announces its leave when its user has
# no entry left (also when Redis lost the entry, and its count with it). Returns 1 if it
# announced.
PRESENCE_REMOVE: Final = (
    _NOW
    + _PRUNE
    + """
local existed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local left = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
if existed == 1 and left > 0 then left = redis.call('HINCRBY', KEYS[3], ARGV[2], -1) end
if left > 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
if ARGV[6] == '' then return 0 end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""
)

# KEYS: presence. ARGV: -, -, -, -, the pub/sub channel. Drops the expired entries,
# returns the others.
PRESENCE_READ: Final = (
    _NOW
    + _PRUNE
    + """
return redis.call('HVALS', KEYS[1])
"""
)

# KEYS: the bans hash. ARGV: user, ban, user, ban... Forgets each user's ban if it is
# still the one given (a node may have banned the user again since it was read).
FORGET_BANS: Final = """
for i = 1, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
        redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
return 1
"""

# KEYS: the nodes sorted set, this node's channel-count hash. ARGV: node id, time to
# live (ms), the prefix of the nodes' count hashes, then channel, count pairs (a count of
# 0 removes the channel). Keeps the node listed for the time to live, and its hash for
# twice that (so that a sweep can still read the channels of a node that died). Returns
# whether the hash existed before this write (a node whose hash expired or was swept
# while Redis was out of reach writes all its counts again), and the channel, 'o'/'v'
# pairs this write occupied or vacated in the whole cluster (no other listed node has
# the channel).
NODE_COUNTS: Final = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local existed = redis.call('EXISTS', KEYS[2])
-- Every listed node, dead ones not yet swept included: the sweep reports what those
-- held alone, so that a channel is vacated (or occupied) once, not by both.
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1)
local function elsewhere(channel)
    for _, node in ipairs(nodes) do
        if node ~= ARGV[1] and redis.call('HEXISTS', ARGV[3] .. node, channel) == 1 then
            return true
        end
    end
    return false
end
local changes = {}
for i = 4, #ARGV, 2 do
    local channel = ARGV[i]
    local had = redis.call('HEXISTS', KEYS[2], channel) == 1
    if ARGV[i + 1] == '0' then
        redis.call('HDEL', KEYS[2], channel)
        if had and not elsewhere(channel) then
            changes[#changes + 1] = channel
            changes[#changes + 1] = 'v'
        end
    else
        redis.call('HSET', KEYS[2], channel, ARGV[i + 1])
        if not had and not elsewhere(channel) then
            changes[#changes + 1] = channel
            changes[#changes + 1] = 'o'
        end
    end
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[2]))
return {existed, changes}
"""

# KEYS: the nodes sorted set. ARGV: the prefix of the nodes' count hashes. Forgets the
# nodes whose time to live has passed (they died, or lost Redis) and their counts;
# returns the channels that only they had, now vacated in the whole cluster. A node
# comes back by writing its counts again.
SWEEP_NODES: Final = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ms)
if #dead == 0 then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ms)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ms, '+inf')
local vacated, seen = {}, {}
for _, node in ipairs(dead) do
    local channels = redis.call('HKEYS', ARGV[1] .. node)
    redis.call('DEL', ARGV[1] .. node)
    for _, channel in ipairs(channels) do
        if not seen[channel] then
            seen[channel] = true
            local found = false
            for _, other in ipairs(live) do
                if redis.call('HEXISTS', ARGV[1] .. other, channel) == 1 then
                    found = true
                    break
                end
            end
            if not found then vacated[#vacated + 1] = channel end
        end
    end
end
return vacated
"""

# KEYS: the nodes sorted set. ARGV: the prefix of the nodes' count hashes, a channel
# prefix, the channel to list after ('' for the first), how many. Returns name, count
# pairs in name order, summed over the live nodes, one more than asked when there are
# more.
CHANNELS: Final = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local prefix, after, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local counts, names = {}, {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ms, '+inf')) do
    local entries = redis.call('HGETALL', ARGV[1] .. node)
    for i = 1, #entries, 2 do
        local name = entries[i]
        if name > after and string.sub(name, 1, #prefix) == prefix then
            local count = counts[name]
            if count == nil then
                names[#names + 1] = name
                count = 0
            end
            counts[name] = count + tonumber(entries[i + 1])
        end
    end
end
table.sort(names)
local found = {}
for i = 1, math.min(#names, limit + 1) do
    found[#found + 1] = names[i]
    found[#found + 1] = counts[names[i]]
end
return found
"""
