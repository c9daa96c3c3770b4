-- wrk script: POST /api/reviews/ with varied bodies; prints a JSON summary line at the end.
-- Environment: BENCH_TOKEN (API token), BENCH_RESTAURANTS (comma-separated ids).

local token = os.getenv("BENCH_TOKEN")
local ids = {}
for id in string.gmatch(os.getenv("BENCH_RESTAURANTS") or "1", "[^,]+") do
  ids[#ids + 1] = id
end
local texts = {
  "Great burger, fries were a bit cold but the sauce is amazing.",
  "It was okay. Nothing special, delivery on time.",
  "Comida maravilhosa e entrega rapida, chegou tudo quentinho.",
  "Loved the pizza, crispy crust and generous toppings. Will order again!",
  "Muito bom, mas a porcao poderia ser maior pelo preco.",
  "Best sushi in town, fresh fish and beautiful presentation.",
}

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = "Token " .. token

local counter = 0

request = function()
  counter = counter + 1
  local body = string.format(
    '{"restaurant": %s, "rating": %d, "text": "%s #%d", "author_name": "wrk"}',
    ids[math.random(#ids)], math.random(1, 5), texts[math.random(#texts)], counter
  )
  return wrk.format(nil, "/api/reviews/", nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, '
      .. '"p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean
  ))
end
