-- Phase 1 of a read: return the cached value, or grant this reader the lease.
--
-- KEYS[1] - the value key
-- KEYS[2] - the flag (lease) key; same cluster hash tag as KEYS[1]
-- ARGV[1] - this reader's token (random, 128 bits, unique per read)
-- ARGV[2] - the lease lifetime in milliseconds (flag_ttl)
-- ARGV[3] - optional: bytes this reader found unusable (undecodable, or failing verify)
--           under the value key; they are deleted first if the key still holds exactly them
--
-- returns:
--   a bulk string - the value key's bytes (a hit; a tombstone is a hit too)
--   1             - the lease is now held by ARGV[1] (or already was): fetch, then call
--                   commit.lua
--   0             - busy: another reader holds the lease
local value_key = KEYS[1]
local flag_key = KEYS[2]
local token = ARGV[1]
local flag_ttl_ms = ARGV[2]
local discard = ARGV[3]

local value = redis.call('GET', value_key)
if value and discard and value == discard then
    -- NOTE: compare before deleting, so a fresh value committed since the caller's
    -- read is never thrown away in its place.
    redis.call('DEL', value_key)
    value = false
end
if value then
    return value
end
if redis.call('SET', flag_key, token, 'NX', 'PX', flag_ttl_ms) then
    return 1
end
-- NOTE: a call sent again (its first reply lost with a dropped connection) finds the lease it
-- was granted then: still this reader's, not another's to wait for.
if redis.call('GET', flag_key) == token then
    return 1
end
return 0
