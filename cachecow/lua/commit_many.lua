-- Phase 2 of a batch read: store each fetched value, only under this reader's own live lease.
--
-- KEYS[2i-1]  - the value key of lookup i
-- KEYS[2i]    - the flag (lease) key of lookup i; same cluster hash tag as KEYS[2i-1]
-- ARGV[1]     - the token this reader leased with
-- ARGV[2i]    - the bytes to store for lookup i (what serialize returned, or the tombstone)
-- ARGV[2i+1]  - the value's time to live in milliseconds; "0" means: store nothing, only
--               release the lease (a fetch whose object may not be cached). Never an EXPIRE 0.
--
-- returns an array with one entry per lookup, in order:
--   1 - done (stored, or released); the lease is gone
--   0 - refused: the lease was voided or expired, and may belong to another reader now
local token = ARGV[1]

local replies = {}
for n = 1, #KEYS / 2 do
    local value_key = KEYS[2 * n - 1]
    local flag_key = KEYS[2 * n]
    local payload = ARGV[2 * n]
    local ttl_ms = ARGV[2 * n + 1]
    -- NOTE: the token comparison, as in commit.lua: "a flag exists" is not enough.
    if redis.call('GET', flag_key) == token then
        if ttl_ms ~= '0' then
            redis.call('SET', value_key, payload, 'PX', ttl_ms)
        end
        redis.call('DEL', flag_key)
        replies[n] = 1
    else
        replies[n] = 0
    end
end
return replies
