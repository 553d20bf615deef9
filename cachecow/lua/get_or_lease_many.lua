-- Phase 1 of a batch read: for each lookup, its cached value or a lease for this reader.
--
-- KEYS[2i-1] - the value key of lookup i
-- KEYS[2i]   - the flag (lease) key of lookup i; same cluster hash tag as KEYS[2i-1]
-- ARGV[1]    - this reader's token (random, 128 bits, unique per read)
-- ARGV[2]    - the lease lifetime in milliseconds (flag_ttl)
-- ARGV[3]    - the refresh window of a value, in milliseconds (refresh_ahead): a hit whose
--              value has at most this long left to live also grants this reader the lease,
--              to refresh it; "0" for none
-- ARGV[4]    - the refresh window of a tombstone, in milliseconds; "0" for none
-- ARGV[4+i]  - optional (all or none): bytes this reader found unusable under value key i,
--              deleted first if the key still holds exactly them; "" for none
--
-- returns an array with one entry per lookup, in order:
--   a bulk string - the value key's bytes (a hit; a tombstone is a hit too)
--   {bytes, 1}    - a hit inside the refresh window, and the lease is now held by ARGV[1]
--                   (or already was): use the bytes, then fetch and commit, as after 1
--   1             - the lease is now held by ARGV[1] (or already was)
--   0             - busy: another reader holds the lease
--   2             - as 1, after removing foreign data: the value or flag key held another
--                   type than a string (a hash, a list...); see get_or_lease.lua
--   3             - as 0, after repairing foreign data: a value key of another type was
--                   deleted, or the flag had no time to live and was given flag_ttl
--
-- NOTE: any number of lookups: MGET is sent in chunks of CHUNK keys, because Lua's unpack
-- fails ("too many results to unpack") beyond about 8,000 values.
-- NOTE: a value key of another type (foreign data) reads as a miss here (MGET answers nil for
-- it, where GET raises WRONGTYPE): each miss is checked with EXISTS (one O(1) command per miss,
-- none per hit), and such a key is deleted and reported, as get_or_lease.lua does.
local CHUNK = 4000
local token = ARGV[1]
local flag_ttl_ms = ARGV[2]
local refresh_ms = tonumber(ARGV[3] or '0')
local tombstone_refresh_ms = tonumber(ARGV[4] or '0')
local has_discards = #ARGV > 4
-- NOTE: cachecow.TOMBSTONE, the reserved value of a cached "not found" (tests check they match).
local TOMBSTONE = '\0cachecow:tombstone\0'

local value_keys = {}
for i = 1, #KEYS, 2 do
    value_keys[#value_keys + 1] = KEYS[i]
end
-- NOTE: one MGET (per chunk) instead of a GET per key keeps a batch of hits close to a plain
-- MGET. MGET answers nil for a key of another type, where GET would raise WRONGTYPE.
local values = {}
for first = 1, #value_keys, CHUNK do
    local chunk = redis.call('MGET', unpack(value_keys, first, math.min(first + CHUNK - 1, #value_keys)))
    for n = 1, #chunk do
        values[first + n - 1] = chunk[n]
    end
end

local replies = {}
for n = 1, #value_keys do
    local value_key = KEYS[2 * n - 1]
    local flag_key = KEYS[2 * n]
    local value = values[n]
    if value and has_discards then
        local discard = ARGV[4 + n]
        if discard ~= '' and value == discard then
            redis.call('DEL', value_key)
            value = false
        end
    end
    if value then
        replies[n] = value
        local window = value == TOMBSTONE and tombstone_refresh_ms or refresh_ms
        if window > 0 then
            -- NOTE: the refresh lease is a lease like a miss's (see get_or_lease.lua). One PTTL
            -- per hit, only when refresh_ahead is on.
            local ttl = redis.call('PTTL', value_key)
            if ttl >= 0 and ttl <= window then
                if redis.call('SET', flag_key, token, 'NX', 'PX', flag_ttl_ms)
                    or redis.pcall('GET', flag_key) == token then
                    replies[n] = {value, 1}
                end
            end
        end
    else
        local repaired = false
        if redis.call('EXISTS', value_key) == 1 then  -- not a string: foreign data
            redis.call('DEL', value_key)
            repaired = true
        end
        local leased
        if redis.call('SET', flag_key, token, 'NX', 'PX', flag_ttl_ms) then
            leased = true
        else
            local flag = redis.pcall('GET', flag_key)  -- NOTE: pcall: WRONGTYPE is foreign data
            if flag == token then
                leased = true  -- NOTE: sent again after a lost reply (get_or_lease.lua)
            elseif type(flag) == 'table' then
                redis.call('SET', flag_key, token, 'PX', flag_ttl_ms)  -- no reader's lease: replace it
                leased, repaired = true, true
            elseif redis.call('PTTL', flag_key) == -1 then
                redis.call('PEXPIRE', flag_key, flag_ttl_ms)  -- NOTE: every lease has a time to live
                leased, repaired = false, true
            else
                leased = false
            end
        end
        if leased then
            replies[n] = repaired and 2 or 1
        else
            replies[n] = repaired and 3 or 0
        end
    end
end
return replies
