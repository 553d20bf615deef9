-- A batch on one Redis Cluster node in one call: a batch script (get_or_lease_many.lua or
-- commit_many.lua) run once over every lookup of the batch that this node serves, whatever
-- their slots. Not a script of its own: cachecow/_scripts.py sends
--
--   #!lua flags=allow-cross-slot-keys
--   local function run(KEYS, ARGV, redis)
--   <the batch script, unchanged>
--   end
--   <this file>
--
-- The flag (Redis 7+) lets a script touch keys of several slots, as long as this node serves
-- them all. No key is declared: a call that declares keys of several slots is refused
-- (CROSSSLOT), so the keys come in ARGV. Why so: docs/internals.md#node-scripts.
--
-- ARGV[1]  - h, how many arguments of the batch script every lookup shares (its token...)
-- ARGV[2]  - p, how many arguments it takes per lookup
-- ARGV[3..2+h]              - those shared arguments
-- then, for each lookup i:  - its value key, its flag key (one hash tag), its p arguments
--
-- returns an array with one entry per lookup, in order:
--   the batch script's reply for the lookup (a number for a character of a string reply:
--       commit_many.lua's "1" and "0" become 1 and 0)
--   an error "NOTHERE <why>" - the lookup's keys are not both served here now: its slot
--       moved (a call declaring them would get MOVED), or is migrating (ASK, TRYAGAIN), or the
--       cluster is down. Nothing was run for it: send its call alone.
--   another error - the batch script raised (every lookup run here gets it; send them again)
--
-- NOTE: one EXISTS on a lookup's two keys asks Redis what it asks of a call that declares
-- them: may they be served here? From a script the answer "no" is an error, which pcall
-- returns instead of raising. So only lookups served here are run, and nothing is half-run
-- before a key turns out to live elsewhere.
-- NOTE: a command on keys of several slots is refused even under the flag. The batch scripts
-- send MGET and DEL over many lookups: the `redis` they are given sends those key by key.
local real_redis = redis
local cross_slot = setmetatable({}, {__index = real_redis})

function cross_slot.call(command, ...)
    local name = string.upper(command)
    if name == 'MGET' then
        local keys, values = {...}, {}
        for n = 1, #keys do
            local value = real_redis.pcall('GET', keys[n])
            if type(value) == 'table' then
                if not string.find(tostring(value.err), 'WRONGTYPE', 1, true) then
                    error(value)
                end
                value = false  -- MGET answers nil for a key of another type
            end
            values[n] = value
        end
        return values
    elseif name == 'DEL' or name == 'UNLINK' or name == 'EXISTS' or name == 'TOUCH' then
        local keys, total = {...}, 0
        for n = 1, #keys do
            total = total + real_redis.call(command, keys[n])
        end
        return total
    end
    return real_redis.call(command, ...)
end

local shared, per_lookup = tonumber(ARGV[1]), tonumber(ARGV[2])
local stride = 2 + per_lookup
local count = (#ARGV - 2 - shared) / stride
local keys, args, runs = {}, {}, {}
for n = 1, shared do
    args[n] = ARGV[2 + n]
end
local replies = {}
for i = 1, count do
    local at = 3 + shared + (i - 1) * stride
    local here = real_redis.pcall('EXISTS', ARGV[at], ARGV[at + 1])
    if type(here) == 'table' then
        replies[i] = {err = 'NOTHERE ' .. tostring(here.err)}
    else
        keys[#keys + 1] = ARGV[at]
        keys[#keys + 1] = ARGV[at + 1]
        for n = 1, per_lookup do
            args[#args + 1] = ARGV[at + 1 + n]
        end
        runs[#runs + 1] = i
    end
end
if #runs > 0 then
    local ok, reply = pcall(run, keys, args, cross_slot)
    if not ok then
        local failed = {err = 'ERR ' .. tostring(reply)}
        if type(reply) == 'table' and reply.err then
            failed = {err = reply.err}
        end
        for _, i in ipairs(runs) do
            replies[i] = failed
        end
    elseif type(reply) == 'string' then
        for n, i in ipairs(runs) do
            replies[i] = string.byte(reply, n) - 48
        end
    else
        for n, i in ipairs(runs) do
            replies[i] = reply[n]
        end
    end
end
return replies
