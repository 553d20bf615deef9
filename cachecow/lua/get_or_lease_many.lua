-- Phase 1 of a batch read: for each lookup, its cached value or a lease for this reader.
--
-- KEYS[2i-1] - the value key of lookup i
-- KEYS[2i]   - the flag (lease) key of lookup i; same cluster hash tag as KEYS[2i-1]
-- ARGV[1]    - this reader's token (random, 128 bits, unique per read)
-- ARGV[2]    - the lease lifetime in milliseconds (flag_ttl)
-- ARGV[2+i]  - optional (all or none): bytes this reader found unusable under value key i,
--              deleted first if the key still holds exactly them; "" for none
--
-- returns an array with one entry per lookup, in order:
--   a bulk string - the value key's bytes (a hit; a tombstone is a hit too)
--   1             - the lease is now held by ARGV[1] (or already was)
--   0             - busy: another reader holds the lease
local token = ARGV[1]
local flag_ttl_ms = ARGV[2]
local has_discards = #ARGV > 2

local value_keys = {}
for i = 1, #KEYS, 2 do
    value_keys[#value_keys + 1] = KEYS[i]
end
-- NOTE: one MGET instead of a GET per key keeps a batch of hits close to a plain MGET.
local values = redis.call('MGET', unpack(value_keys))

local replies = {}
for n = 1, #value_keys do
    local value_key = KEYS[2 * n - 1]
    local flag_key = KEYS[2 * n]
    local value = values[n]
    if value and has_discards then
        local discard = ARGV[2 + n]
        if discard ~= '' and value == discard then
            redis.call('DEL', value_key)
            value = false
        end
    end
    if value then
        replies[n] = value
    elseif redis.call('SET', flag_key, token, 'NX', 'PX', flag_ttl_ms) then
        replies[n] = 1
    elseif redis.call('GET', flag_key) == token then
        replies[n] = 1  -- NOTE: sent again after a lost reply: its own lease (get_or_lease.lua)
    else
        replies[n] = 0
    end
end
return replies
