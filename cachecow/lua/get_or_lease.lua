-- Phase 1 of a read: return the cached value, or grant this reader the lease.
--
-- KEYS[1] - the value key
-- KEYS[2] - the flag (lease) key; same cluster hash tag as KEYS[1]
-- ARGV[1] - this reader's token (random, 128 bits, unique per read)
-- ARGV[2] - the lease lifetime in milliseconds (flag_ttl)
-- ARGV[3] - optional: bytes this reader found unusable (undecodable, or failing verify)
--           under the value key; they are deleted first if the key still holds exactly them;
--           "" for none
-- ARGV[4] - optional (refresh_ahead): the refresh window of a value, in milliseconds. A hit
--           whose value has at most this long left to live also grants this reader the lease,
--           to refresh it; "0" for none
-- ARGV[5] - the refresh window of a tombstone, in milliseconds (given with ARGV[4])
--
-- returns:
--   a bulk string - the value key's bytes (a hit; a tombstone is a hit too)
--   {bytes, 1}    - only when ARGV[4] is given: a hit inside the refresh window, and the lease
--                   is now held by ARGV[1] (or already was): use the bytes, then fetch and call
--                   commit.lua, as after 1. Other readers keep getting the bytes meanwhile.
--   1             - the lease is now held by ARGV[1] (or already was): fetch, then call
--                   commit.lua
--   0             - busy: another reader holds the lease
--   2             - as 1, after removing foreign data: the value key or the flag key held
--                   another type than a string (a hash, a list...), and was deleted
--   3             - as 0, after repairing foreign data: the value key held another type and
--                   was deleted, or the flag had no time to live and was given flag_ttl
local value_key = KEYS[1]
local flag_key = KEYS[2]
local token = ARGV[1]
local flag_ttl_ms = ARGV[2]
local discard = ARGV[3]
local refresh_ms = tonumber(ARGV[4] or '0')
local tombstone_refresh_ms = tonumber(ARGV[5] or '0')
-- NOTE: cachecow.TOMBSTONE, the reserved value of a cached "not found" (tests check they match).
local TOMBSTONE = '\0cachecow:tombstone\0'
local repaired = false

-- NOTE: pcall, not call: a key of another type (written by someone else) answers WRONGTYPE,
-- an error table here. It is no value of ours: deleting it is atomic with the check, and
-- leaves the lookup a plain miss instead of failing every read until it expires (if ever).
local value = redis.pcall('GET', value_key)
if type(value) == 'table' then
    redis.call('DEL', value_key)
    value = false
    repaired = true
end
if value and discard and discard ~= '' and value == discard then
    -- NOTE: compare before deleting, so a fresh value committed since the caller's
    -- read is never thrown away in its place.
    redis.call('DEL', value_key)
    value = false
end
if value then
    local window = value == TOMBSTONE and tombstone_refresh_ms or refresh_ms
    if window > 0 then
        -- NOTE: a refresh takes the lease exactly as a miss does (SET NX, this reader's token),
        -- so its commit is refused like any other after an invalidation, which deletes the
        -- flag; and one reader refreshes while the others, finding the flag, get the value.
        -- A value without a time to live (-1: foreign data) is never refreshed.
        local ttl = redis.call('PTTL', value_key)
        if ttl >= 0 and ttl <= window then
            if redis.call('SET', flag_key, token, 'NX', 'PX', flag_ttl_ms)
                or redis.pcall('GET', flag_key) == token then  -- NOTE: sent again (see below)
                return {value, 1}
            end
        end
    end
    return value
end
if redis.call('SET', flag_key, token, 'NX', 'PX', flag_ttl_ms) then
    return repaired and 2 or 1
end
-- NOTE: a call sent again (its first reply lost with a dropped connection) finds the lease it
-- was granted then: still this reader's, not another's to wait for.
local flag = redis.pcall('GET', flag_key)
if flag == token then
    return repaired and 2 or 1
end
if type(flag) == 'table' then
    -- NOTE: a flag key of another type is no reader's lease: replace it with this one.
    redis.call('SET', flag_key, token, 'PX', flag_ttl_ms)
    return 2
end
-- NOTE: every lease has a time to live; a flag without one (written by someone else) would
-- keep every reader of this lookup waiting and fetching uncached forever.
if redis.call('PTTL', flag_key) == -1 then
    redis.call('PEXPIRE', flag_key, flag_ttl_ms)
    return 3
end
return repaired and 3 or 0
