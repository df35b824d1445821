<#
.SYNOPSIS
    Installs or upgrades the Writeback relay as the Windows service WritebackRelay.

.DESCRIPTION
    Run it from an elevated PowerShell (Windows PowerShell 5.1 or PowerShell 7) on a domain-joined
    member server, never on a domain controller. It

      1. creates (or upgrades) a Python virtual environment in C:\Program Files\Writeback\relay
         and installs the relay into it with pip;
      2. creates C:\ProgramData\Writeback (configuration), with state\ (journal) and logs\ below
         it, open only to SYSTEM, Administrators and the service (icacls /inheritance:r);
      3. registers the service with WinSW (writeback-relay.xml beside this script), runs it as
         NT SERVICE\WritebackRelay or the gMSA you name, gives it an unrestricted service SID
         (so the ACLs above also reach a gMSA) and restart-on-failure actions.

    It does not start a new service: write relay.toml, the bind password file and the keys first
    (docs/relay-windows.md), then Start-Service WritebackRelay. Run it again to upgrade: it stops
    the service, upgrades the package and starts the service again if it was running.

.PARAMETER WinSW
    The WinSW 2.x executable (for example WinSW-x64.exe) that you downloaded from the project's
    GitHub releases and whose SHA-256 you checked. The script never downloads anything itself.

.PARAMETER Package
    What pip installs: 'writeback[relay]' (the default), or a wheel with the extra, for example
    'C:\install\writeback-0.1.0-py3-none-any.whl[relay]'. pip honours HTTPS_PROXY and pip.ini.

.PARAMETER Python
    A python.exe of Python 3.11 or later installed for all users. Default: the one the py
    launcher picks (py -3).

.PARAMETER ServiceAccount
    'NT SERVICE\WritebackRelay' (the default, a virtual account), or a gMSA such as
    'CORP\gmsa-wbrelay$' that Install-ADServiceAccount has installed on this server.

.PARAMETER RecreateVenv
    Delete and recreate the virtual environment, for example after upgrading Python itself.

.EXAMPLE
    .\Install-WritebackRelay.ps1 -WinSW C:\install\WinSW-x64.exe

.EXAMPLE
    .\Install-WritebackRelay.ps1 -WinSW C:\install\WinSW-x64.exe -ServiceAccount 'CORP\gmsa-wbrelay$'
#>
#Requires -RunAsAdministrator
#Requires -Version 5.1
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $WinSW,
    [string] $Package = 'writeback[relay]',
    [string] $Python,
    [string] $ServiceAccount = 'NT SERVICE\WritebackRelay',
    [switch] $RecreateVenv
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# The same names and paths as writeback-relay.xml and docs/relay-windows.md (a unit test checks).
$ServiceName = 'WritebackRelay'
$VenvDir = 'C:\Program Files\Writeback\relay'
$ServiceDir = 'C:\Program Files\Writeback\service'
$DataDir = 'C:\ProgramData\Writeback'
$StateDir = 'C:\ProgramData\Writeback\state'
$LogDir = 'C:\ProgramData\Writeback\logs'
$WrapperName = 'writeback-relay'
# Well-known SIDs: icacls takes *SID in every language of Windows, where names are translated.
$SidSystem = 'S-1-5-18'
$SidAdministrators = 'S-1-5-32-544'
# The same restarts as the <onfailure> elements of writeback-relay.xml: 10 s, 30 s, then 60 s;
# the count resets after an hour (3600 s) of running.
$FailureActions = 'restart/10000/restart/30000/restart/60000'
$FailureReset = 3600

function Invoke-Native {
    # Runs a program and stops on a non-zero exit code, which PowerShell 5.1 does not do itself.
    param([string] $FilePath, [string[]] $Arguments)
    & $FilePath @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "$FilePath $($Arguments -join ' ') failed with exit code $LASTEXITCODE"
    }
}

# --- 0. Where we are ---------------------------------------------------------------------------
$role = (Get-CimInstance -ClassName Win32_ComputerSystem).DomainRole
if ($role -ge 4) {
    # 4 and 5: backup and primary domain controller. The relay holds the password of an account
    # that can reset passwords; keep it off the DCs, like every other writeback agent.
    throw 'This computer is a domain controller. Install the relay on a domain-joined member server.'
}
if ($role -ne 3) {
    Write-Warning 'This computer is not a domain-joined member server; the relay is meant to run on one.'
}
if (-not (Test-Path -LiteralPath $WinSW -PathType Leaf)) {
    throw "WinSW executable not found: $WinSW"
}
$xml = Join-Path $PSScriptRoot "$WrapperName.xml"
if (-not (Test-Path -LiteralPath $xml -PathType Leaf)) {
    throw "$xml is missing: keep writeback-relay.xml beside this script."
}

# --- 1. Python and the virtual environment ------------------------------------------------------
if (-not $Python) {
    if (-not (Get-Command py.exe -ErrorAction SilentlyContinue)) {
        throw 'The py launcher is missing: install Python 3.11 or later from python.org for all users, or pass -Python.'
    }
    $Python = & py.exe -3 -c 'import sys; print(sys.executable)'
    if ($LASTEXITCODE -ne 0 -or -not $Python) { throw 'py -3 found no Python 3.' }
    $Python = "$Python".Trim()
}
& $Python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'
if ($LASTEXITCODE -ne 0) { throw "$Python is not Python 3.11 or later." }
if ($Python -like "$env:SystemDrive\Users\*" -or $Python -like '*\WindowsApps\*') {
    # The service account cannot read a per-user or Microsoft Store installation.
    throw "$Python is installed for one user only; install Python from python.org for all users."
}

$existing = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
$wasRunning = [bool]($existing -and $existing.Status -eq 'Running')
if ($wasRunning) {
    Write-Host "Stopping $ServiceName for the upgrade ..."
    Stop-Service -Name $ServiceName
}

if ($RecreateVenv -and (Test-Path -LiteralPath $VenvDir)) {
    Remove-Item -LiteralPath $VenvDir -Recurse -Force
}
$VenvPython = Join-Path $VenvDir 'Scripts\python.exe'
if (-not (Test-Path -LiteralPath $VenvPython)) {
    Invoke-Native $Python @('-m', 'venv', $VenvDir)
}
Invoke-Native $VenvPython @('-m', 'pip', 'install', '--upgrade', '--quiet', 'pip')
Invoke-Native $VenvPython @('-m', 'pip', 'install', '--upgrade', $Package)
$Relay = Join-Path $VenvDir 'Scripts\writeback-relay.exe'
Invoke-Native $Relay @('--help') | Out-Null
# The SID of NT SERVICE\WritebackRelay, from the relay itself, so that these ACLs and the relay's
# own permission check (writeback/relay/permissions.py) can never disagree.
$ServiceSid = (& $VenvPython -c "from writeback.relay.permissions import service_sid; print(service_sid('$ServiceName'))").Trim()
if ($LASTEXITCODE -ne 0 -or $ServiceSid -notlike 'S-1-5-80-*') { throw 'Cannot compute the service SID.' }

# --- 2. Configuration, state and logs, private to the service ------------------------------------
foreach ($dir in @($DataDir, $StateDir, $LogDir)) {
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
}
# Configuration (relay.toml, the bind password file, the CA and cloud keys): administrators write
# it, the service only reads it. /inheritance:r drops what C:\ProgramData hands down (Users: read).
Invoke-Native icacls.exe @($DataDir, '/inheritance:r', '/grant:r',
    "*${SidSystem}:(OI)(CI)F", "*${SidAdministrators}:(OI)(CI)F", "*${ServiceSid}:(OI)(CI)RX")
# The journal (and relay-status.json) and the logs: the service writes them.
foreach ($dir in @($StateDir, $LogDir)) {
    Invoke-Native icacls.exe @($dir, '/inheritance:r', '/grant:r',
        "*${SidSystem}:(OI)(CI)F", "*${SidAdministrators}:(OI)(CI)F", "*${ServiceSid}:(OI)(CI)M")
}
# The key directory is made by 'writeback-relay keys init', which closes it the same way.

# --- 3. The service ---------------------------------------------------------------------------------
New-Item -ItemType Directory -Force -Path $ServiceDir | Out-Null
$Wrapper = Join-Path $ServiceDir "$WrapperName.exe"
Copy-Item -LiteralPath $WinSW -Destination $Wrapper -Force
Copy-Item -LiteralPath $xml -Destination (Join-Path $ServiceDir "$WrapperName.xml") -Force
if (-not $existing) {
    Invoke-Native $Wrapper @('install')
}
# Unrestricted: Windows adds NT SERVICE\WritebackRelay to the token whatever the account, so the
# ACLs above (and those 'keys init' writes) also work for a gMSA.
Invoke-Native sc.exe @('sidtype', $ServiceName, 'unrestricted')
# WinSW 2.x installs as LocalSystem; the relay needs no privilege at all.
Invoke-Native sc.exe @('config', $ServiceName, 'obj=', $ServiceAccount)
Invoke-Native sc.exe @('failure', $ServiceName, 'reset=', "$FailureReset", 'actions=', $FailureActions)
# Also apply the failure actions when the service stops with a non-zero exit code.
Invoke-Native sc.exe @('failureflag', $ServiceName, '1')

if ($wasRunning) {
    Start-Service -Name $ServiceName
    Write-Host "$ServiceName upgraded and started again."
    return
}

Write-Host @"
$ServiceName is installed (account $ServiceAccount, service SID $ServiceSid) and not started.
Next, from this elevated prompt (docs/relay-windows.md has the details):
  1. Write $DataDir\relay.toml, the CA file, the cloud keys and the bind password file.
  2. & '$Relay' keys init --dir $DataDir\keys --relay-id <relay id>
     & '$Relay' keys export --dir $DataDir\keys   (register these public keys)
  3. & '$Relay' doctor --config $DataDir\relay.toml
  4. Start-Service $ServiceName
Logs: $LogDir\$WrapperName.out.log (JSON lines) and $WrapperName.err.log.
"@
