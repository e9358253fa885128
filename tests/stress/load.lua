-- wrk script for run_stress.py:  wrk -t2 -c32 -dLIMIT_S -s load.lua URL -- MODE PER_THREAD
--   MODE        "hello" (GET, expects "Hello, World!") or "echo" (POST of 1 KiB to /echo,
--               expects "1024")
--   PER_THREAD  each wrk thread stops after this many responses (0: run for -d)
-- A thread that reaches its limit writes "STOPPED" on stderr and stops; wrk itself only
-- ends at -d, so run_stress.py sends it SIGINT (wrk then prints its summary) once every
-- thread has stopped.  -d is the time bound.
-- Prints "BAD <n>" at the end: responses whose status was not 200 or whose body was not
-- the expected one.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   mode = args[1] or "hello"
   limit = tonumber(args[2] or "0") or 0
   count = 0
   bad = 0
   if mode == "echo" then
      wrk.method = "POST"
      wrk.body = string.rep("x", 1024)
      wrk.headers["Content-Type"] = "application/octet-stream"
      expected = "1024"
   else
      expected = "Hello, World!"
   end
end

function response(status, headers, body)
   count = count + 1
   if status ~= 200 or body ~= expected then
      bad = bad + 1
   end
   if limit > 0 and count == limit then
      io.stderr:write("STOPPED\n")
      io.stderr:flush()
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local total = 0
   for _, t in ipairs(threads) do
      total = total + (t:get("bad") or 0)
   end
   io.write(string.format("BAD %d\n", total))
end
