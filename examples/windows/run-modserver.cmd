@echo off
rem Runs modserver for the "modserver" scheduled task (see docs/operating.md,
rem "Starting at boot on Windows"), and starts it again whenever it exits.
rem Edit the three lines below: where it lives, its venv, its config file.
set "HOME_DIR=C:\modserver"
set "VENV=C:\modserver\venv"
set "CONFIG=C:\modserver\server.config"

cd /d "%HOME_DIR%"
if not exist logs mkdir logs
:run
echo %date% %time% starting modserver>> logs\restarts.log
"%VENV%\Scripts\twistd.exe" -n --logfile=logs\server.log modserver --config "%CONFIG%" --listen tcp:36577:interface=0.0.0.0
echo %date% %time% modserver exited with code %errorlevel%; starting it again in 10 s>> logs\restarts.log
rem twistd rotates server.log at 1 MB and keeps every old file: drop those older than 30 days.
forfiles /p logs /m server.log.* /d -30 /c "cmd /c del @path" 2>nul
rem A pause that works without a console (timeout.exe refuses to run without one).
ping -n 11 127.0.0.1 >nul
goto run
