# musicgen-live from Sonic Pi. Sonic Pi listens for OSC on port 4560, so set
#   [osc] reply_port = 4560   in config.toml (or send /musicgen/subscribe 4560)
use_osc "127.0.0.1", 57130

osc "/musicgen/prompt", "warm lo-fi piano, vinyl, 80 bpm"

live_loop :guidance do
  osc "/musicgen/cfg", [2.5, 3.5, 5].tick
  sleep 8
end

live_loop :replies do
  use_real_time
  status = sync "/osc*/musicgen/status"
  puts status
end
