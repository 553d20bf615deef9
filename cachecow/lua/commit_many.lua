-- Phase 2 of a batch read: store each fetched value, only under this reader's own live lease.
--
-- KEYS[2i-1]  - the value key of lookup i
-- KEYS[2i]    - the flag (lease) key of lookup i; same cluster hash tag as KEYS[2i-1]
-- ARGV[1]     - the token this reader leased with
-- ARGV[2i]    - the bytes to store for lookup i (what serialize returned, or the tombstone)
-- ARGV[2i+1]  - the value's time to live in milliseconds; "0" means: store nothing, only
--               release the lease (a fetch whose object may not be cached). Never an EXPIRE 0.
--
-- returns a string with one character per lookup, in order:
--   "1" - done (stored, or released); the lease is gone
--   "0" - refused: the lease was voided or expired, and may belong to another reader now
--
-- NOTE: any number of lookups: MGET and DEL are sent in chunks of CHUNK keys, because Lua's
-- unpack fails ("too many results to unpack") beyond about 8,000 values. MGET answers nil
-- for a flag key of another type (foreign data): no lease of this reader's, refused.
local CHUNK = 4000
local token = ARGV[1]
local count = #KEYS / 2

local flag_keys = {}
for n = 1, count do
    flag_keys[n] = KEYS[2 * n]
end
-- NOTE: one MGET and one DEL (per chunk) for all the flags, instead of a GET and a DEL per
-- lookup.
local flags = {}
for first = 1, count, CHUNK do
    local chunk = redis.call('MGET', unpack(flag_keys, first, math.min(first + CHUNK - 1, count)))
    for n = 1, #chunk do
        flags[first + n - 1] = chunk[n]
    end
end

local owned = {}
local replies = {}
for n = 1, count do
    -- NOTE: the token comparison, as in commit.lua: "a flag exists" is not enough.
    if flags[n] == token then
        local ttl_ms = ARGV[2 * n + 1]
        if ttl_ms ~= '0' then
            redis.call('SET', KEYS[2 * n - 1], ARGV[2 * n], 'PX', ttl_ms)
        end
        owned[#owned + 1] = flag_keys[n]
        replies[n] = '1'
    else
        replies[n] = '0'
    end
end
for first = 1, #owned, CHUNK do
    redis.call('DEL', unpack(owned, first, math.min(first + CHUNK - 1, #owned)))
end
return table.concat(replies)
