-- Give up a lease without storing anything (fetch or serialize raised).
--
-- KEYS[1] - the flag (lease) key
-- ARGV[1] - the token this reader leased with
--
-- returns:
--   1 - the lease was this reader's and is released
--   0 - the lease had already been voided, expired, or taken by another reader: untouched
local flag_key = KEYS[1]
local token = ARGV[1]

if redis.call('GET', flag_key) == token then
    redis.call('DEL', flag_key)
    return 1
end
return 0
