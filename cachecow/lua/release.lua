-- Give up a lease without storing anything (fetch or serialize raised).
--
-- KEYS[1] - the flag (lease) key
-- ARGV[1] - the token this reader leased with
--
-- returns:
--   1 - the lease was this reader's and is released
--   0 - the lease had already been voided, expired, or taken by another reader (or the flag
--       key holds foreign data of another type): untouched
local flag_key = KEYS[1]
local token = ARGV[1]

-- NOTE: pcall: a flag key of another type (foreign data) answers WRONGTYPE, an error table,
-- which is no token: untouched (get_or_lease.lua removes it), instead of an error.
if redis.pcall('GET', flag_key) == token then
    redis.call('DEL', flag_key)
    return 1
end
return 0
