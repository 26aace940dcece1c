# What openEuler prints at every login (its /etc/profile.d welcome script):
# coloured, and it runs free, df, ps, ip and who, which takes a while under TCG.
if [ -n "$PS1" ]; then
  printf '\n\n\033[1;32mWelcome to %s\033[0m\n\n' "$(uname -r)"
  printf 'System information as of time: \t%s\n\n' "$(date)"
  printf 'System load: \t%s\n' "$(cut -d' ' -f1 /proc/loadavg)"
  printf 'Memory used: \t%s\n' "$(free | awk '/^Mem:/ { printf "%.1f%%", $3 / $2 * 100 }')"
  printf 'Usage On: \t%s\n' "$(df -h / | awk 'NR == 2 { print $5 }')"
  printf 'IP address: \t%s\n' "$(ip -4 -o addr show scope global | awk '{ print $4; exit }')"
  printf 'Users online: \t%s\n' "$(who | wc -l)"
  printf 'Processes: \t%s\n\n' "$(ps -e --no-headers | wc -l)"
fi
