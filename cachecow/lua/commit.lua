-- Phase 2 of a read: store the fetched value, only under this reader's own live lease.
--
-- KEYS[1] - the value key
-- KEYS[2] - the flag (lease) key; same cluster hash tag as KEYS[1]
-- ARGV[1] - the token this reader leased with
-- ARGV[2] - the bytes to store (exactly what serialize returned, or the tombstone)
-- ARGV[3] - the value's time to live in milliseconds (always > 0)
--
-- returns:
--   1 - stored; the lease is released
--   0 - refused: the lease was voided (invalidate deleted it) or expired, and may now
--       belong to another reader; nothing was written. Also when the flag key holds another
--       type than a string (foreign data): no lease of this reader's; get_or_lease.lua
--       removes it.
local value_key = KEYS[1]
local flag_key = KEYS[2]
local token = ARGV[1]
local payload = ARGV[2]
local ttl_ms = ARGV[3]

local function refused()
    -- NOTE: the token comparison is the whole point. "A flag exists" is not enough: after an
    -- invalidation another reader may hold a fresh lease, and this reader's value is older.
    if redis.call('GET', flag_key) ~= token then
        return true
    end
    return false
end
-- NOTE: pcall: on a flag key of another type (a hash, a list... written by someone else) GET
-- raises WRONGTYPE. That is no lease of this reader's: refuse, as for any flag that is not
-- this lease, instead of failing the read (no extra command on the normal path).
local ok, refuse = pcall(refused)
if not ok or refuse then
    return 0
end
redis.call('SET', value_key, payload, 'PX', ttl_ms)
redis.call('DEL', flag_key)
return 1
